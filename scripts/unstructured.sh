#!/usr/bin/env bash
# Unstructured magnitude pruning of the baseline (AMOUNT of the conv weights zeroed) beside
# channel pruning to the same share of FLOPs: sizes, gzip sizes and measured latency
# -> $RUN/unstructured/{unstructured_report.json, unstructured_summary.txt, <stem>.cfg/.weights}
source "$(dirname "$0")/common.sh"
OUT=$RUN/unstructured
stage_done "$OUT" && exit 0
log_run "$PY" -m yolo_slim.unstructured --cfg "$CFG" --weights "$RUN/baseline/best.pt" \
    --amount "$AMOUNT" --structured-flops "$AMOUNT" --img-size "$IMG" --output-dir "$OUT"
touch "$OUT/.done"
