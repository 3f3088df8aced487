#!/usr/bin/env bash
# Stage 3: channel pruning of the sparse model (+ layer pruning when SHORTCUTS > 0; only the
# dead channels, --dead, when the sparse stage trained to SPARSE_TARGET)
# -> $RUN/pruned/<stem>.cfg + .weights + prune_report.json + channels.png
source "$(dirname "$0")/common.sh"
OUT=$RUN/pruned
stage_done "$OUT" && exit 0
rm -rf "$OUT"
SCORE=(--importance "$IMPORTANCE")
[[ $IMPORTANCE == rank ]] && SCORE+=(--data "$DATA")  # HRank ranks feature maps of DATA's images
# predicted (latency table, measured once per cfg/size and cached) and measured latency
[[ $LATENCY_REPORT == 1 ]] && SCORE+=(--latency-report)
if [[ $SPARSE_TARGET != 0 || $SPARSE_SPEEDUP != 0 ]]; then
    # the sparse stage met its target with exactly dead channels: cut those, for free (kept
    # counts rounded up to the runtime's block where the latency table says it pays)
    log_run "$PY" prune_channels.py --cfg "$CFG" --weights "$RUN/sparse/best.pt" --strategy "$STRATEGY" \
        --dead "${SCORE[@]}" --img-size "$IMG" --output-dir "$OUT"
elif [[ $SHORTCUTS -gt 0 ]]; then
    log_run "$PY" prune_layers.py --cfg "$CFG" --weights "$RUN/sparse/best.pt" --shortcuts "$SHORTCUTS" \
        --strategy "$STRATEGY" --global-percent "$PERCENT" --layer-keep "$KEEP" "${SCORE[@]}" \
        --img-size "$IMG" --output-dir "$OUT"
else
    log_run "$PY" prune_channels.py --cfg "$CFG" --weights "$RUN/sparse/best.pt" --strategy "$STRATEGY" \
        --global-percent "$PERCENT" --layer-keep "$KEEP" "${SCORE[@]}" --img-size "$IMG" --output-dir "$OUT"
fi
touch "$OUT/.done"
