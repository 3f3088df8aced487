#!/usr/bin/env bash
# Stage 4: fine-tune the pruned model with teacher distillation -> $RUN/finetune/<stem>.cfg/.weights
source "$(dirname "$0")/common.sh"
pipeline --stages finetune "$@"
