#!/usr/bin/env bash
# Sensitivity analysis of the sparse model, then channel pruning with the per-layer cuts chosen
# for TARGET_FLOPS (or, when set, TARGET_SPEEDUP: the latency table's prediction)
# -> $RUN/sensitivity/{sensitivity.md,.csv,.png, ratios.json}, $RUN/pruned_sensitivity/<stem>.*
# (fine-tune the result like the pruned model: make finetune with its files, or distill.py)
source "$(dirname "$0")/common.sh"
OUT=$RUN/sensitivity
stage_done "$OUT" && exit 0
TARGET=(--target-flops "$TARGET_FLOPS")
[[ -n $TARGET_SPEEDUP ]] && TARGET=(--target-speedup "$TARGET_SPEEDUP")  # predicted on ORT CPU
log_run "$PY" -m yolo_slim.tools.sensitivity --cfg "$CFG" --weights "$RUN/sparse/best.pt" --data "$DATA" \
    "${TARGET[@]}" --max-drop "$MAX_DROP" --strategy "$STRATEGY" \
    --importance "$IMPORTANCE" --layer-keep "$KEEP" --img-size "$IMG" --output-dir "$OUT"
rm -rf "$RUN/pruned_sensitivity"
log_run "$PY" prune_channels.py --cfg "$CFG" --weights "$RUN/sparse/best.pt" --data "$DATA" \
    --layer-ratios "$OUT/ratios.json" --strategy "$STRATEGY" --importance "$IMPORTANCE" \
    --layer-keep "$KEEP" --img-size "$IMG" --output-dir "$RUN/pruned_sensitivity"
touch "$OUT/.done"
