#!/usr/bin/env bash
# INT8 of the fine-tuned model (onnxruntime static quantization, calibrated on CALIB_IMAGES
# images of DATA's train list, decode tail in float, parity vs FP32 printed) next to the FP32
# export -> $RUN/export/<stem>.int8.onnx (+ .quant.json); then REPORT.md with both files' rows
source "$(dirname "$0")/common.sh"
CALIB_IMAGES=${CALIB_IMAGES:-100}
CALIB_METHOD=${CALIB_METHOD:-minmax}
F_CFG=$(one_file "$RUN/finetune/*.cfg")
F_W=$(one_file "$RUN/finetune/*.weights")
mkdir -p "$RUN/export"
log_run "$PY" export.py --cfg "$F_CFG" --weights "$F_W" --format onnx --img-size "$IMG" \
    --int8 --calib-data "$DATA" --calib-images "$CALIB_IMAGES" --calib-method "$CALIB_METHOD" \
    --output "$RUN/export/$(basename "${F_CFG%.cfg}").int8.onnx"
bash "$(dirname "$0")/report.sh"
