#!/usr/bin/env bash
# Stage 0: the built-in synthetic shapes dataset (skipped when DATA points elsewhere or exists).
source "$(dirname "$0")/common.sh"
pipeline --stages data "$@"
