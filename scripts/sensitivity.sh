#!/usr/bin/env bash
# Sensitivity analysis of the sparse model, then channel pruning with the chosen per-layer cuts
# -> $RUN/sensitivity/{sensitivity.md,.csv,.png, ratios.json}, $RUN/pruned_sensitivity/<stem>.*
# (fine-tune the result like the pruned model: make finetune with its files, or distill.py)
source "$(dirname "$0")/common.sh"
OUT=$RUN/sensitivity
stage_done "$OUT" && exit 0
log_run "$PY" -m yolo_slim.tools.sensitivity --cfg "$CFG" --weights "$RUN/sparse/best.pt" --data "$DATA" \
    --target-flops "$TARGET_FLOPS" --max-drop "$MAX_DROP" --strategy "$STRATEGY" \
    --importance "$IMPORTANCE" --layer-keep "$KEEP" --img-size "$IMG" --output-dir "$OUT"
rm -rf "$RUN/pruned_sensitivity"
log_run "$PY" prune_channels.py --cfg "$CFG" --weights "$RUN/sparse/best.pt" --data "$DATA" \
    --layer-ratios "$OUT/ratios.json" --strategy "$STRATEGY" --importance "$IMPORTANCE" \
    --layer-keep "$KEEP" --img-size "$IMG" --output-dir "$RUN/pruned_sensitivity"
touch "$OUT/.done"
