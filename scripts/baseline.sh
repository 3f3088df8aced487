#!/usr/bin/env bash
# Stage 1: train the full-size model (from WEIGHTS if given) -> $RUN/baseline/best.pt
source "$(dirname "$0")/common.sh"
pipeline --stages baseline "$@"
