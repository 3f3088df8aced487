#!/usr/bin/env bash
# Layer pruning alone: remove SHORTCUTS residual blocks -> $RUN/pruned-layers/
source "$(dirname "$0")/common.sh"
pipeline --stages prune-layers "$@"
