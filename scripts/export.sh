#!/usr/bin/env bash
# Stage 5: the files that ship, ONNX of the fine-tuned model (checked in onnxruntime) ->
# $RUN/export/<stem>.onnx (FP32) and <stem>.int8.onnx (onnxruntime static quantization calibrated
# on CALIB_IMAGES images of DATA's train list with CALIB_METHOD, decode tail in float, parity vs
# FP32 printed, + .quant.json). A file that exists is kept; INT8_REDO=1 writes the INT8 again
# (make quantize: other calibration settings).
source "$(dirname "$0")/common.sh"
pipeline --stages export "$@"
