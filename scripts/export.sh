#!/usr/bin/env bash
# Stage 5: the files that ship, ONNX of the fine-tuned model (checked in onnxruntime) ->
# $RUN/export/<stem>.onnx (FP32) and <stem>.int8.onnx (onnxruntime static quantization calibrated
# on CALIB_IMAGES images of DATA's train list with CALIB_METHOD, decode tail in float, parity vs
# FP32 printed, + .quant.json). A file that exists is kept; INT8_REDO=1 writes the INT8 again
# (make quantize: other calibration settings).
source "$(dirname "$0")/common.sh"
F_CFG=$(one_file "$RUN/finetune/*.cfg")
F_W=$(one_file "$RUN/finetune/*.weights")
OUT=$RUN/export/$(basename "${F_CFG%.cfg}")
mkdir -p "$RUN/export"
export_onnx() {  # export_onnx OUT REDO [extra export.py flags]: skipped when OUT exists, unless REDO=1
    local out=$1 redo=$2; shift 2
    [[ -f $out && $redo != 1 ]] && return 0
    log_run "$PY" export.py --cfg "$F_CFG" --weights "$F_W" --format onnx --img-size "$IMG" --output "$out" "$@"
}
export_onnx "$OUT.onnx" 0
export_onnx "$OUT.int8.onnx" "${INT8_REDO:-0}" --int8 --calib-data "$DATA" \
    --calib-images "$CALIB_IMAGES" --calib-method "$CALIB_METHOD"
