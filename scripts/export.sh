#!/usr/bin/env bash
# Stage 5: ONNX of the fine-tuned model (checked in onnxruntime) -> $RUN/export/<stem>.onnx
source "$(dirname "$0")/common.sh"
F_CFG=$(one_file "$RUN/finetune/*.cfg")
F_W=$(one_file "$RUN/finetune/*.weights")
mkdir -p "$RUN/export"
log_run "$PY" export.py --cfg "$F_CFG" --weights "$F_W" --format onnx --img-size "$IMG" \
    --output "$RUN/export/$(basename "${F_CFG%.cfg}").onnx"
