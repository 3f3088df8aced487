#!/usr/bin/env bash
# Unstructured magnitude pruning of the baseline (AMOUNT of the conv weights zeroed) beside
# channel pruning to the same share of FLOPs: sizes, gzip sizes and measured latency
# -> $RUN/unstructured/{unstructured_report.json, unstructured_summary.txt, <stem>.cfg/.weights}
source "$(dirname "$0")/common.sh"
OUT=$RUN/unstructured
stage_done "$OUT" && exit 0
# zeroing AMOUNT of the weights removes AMOUNT of the multiply-adds on paper: the structured model
# that really removes as many keeps 1 - AMOUNT of the FLOPs
KEEP_FLOPS=$(awk -v a="$AMOUNT" 'BEGIN { print 1 - a }')
log_run "$PY" -m yolo_slim.tools.unstructured --cfg "$CFG" --weights "$RUN/baseline/best.pt" \
    --amount "$AMOUNT" --structured-flops "$KEEP_FLOPS" --img-size "$IMG" --output-dir "$OUT"
touch "$OUT/.done"
