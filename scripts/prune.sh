#!/usr/bin/env bash
# Stage 3: channel pruning of the sparse model (+ layer pruning when SHORTCUTS > 0; only the
# dead channels, --dead, when the sparse stage trained to SPARSE_TARGET)
# -> $RUN/pruned/<stem>.cfg + .weights + prune_report.json + channels.png
source "$(dirname "$0")/common.sh"
pipeline --stages prune "$@"
