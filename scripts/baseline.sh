#!/usr/bin/env bash
# Stage 1: train the full-size model (from WEIGHTS if given) -> $RUN/baseline/best.pt
source "$(dirname "$0")/common.sh"
OUT=$RUN/baseline
stage_done "$OUT" && exit 0
XFER=()
[[ $TRANSFER == 1 ]] && XFER=(--transfer ${WEIGHTS_CFG:+--weights-cfg "$WEIGHTS_CFG"})
train_stage "$OUT" "$PY" train_sparse.py --cfg "$CFG" --data "$DATA" ${WEIGHTS:+--weights "$WEIGHTS"} \
    "${XFER[@]}" \
    --epochs "$EPOCHS" --img-size "$IMG" --batch-size "$BATCH" --workers "$WORKERS" \
    ${DEVICE:+--device "$DEVICE"} --output-dir "$OUT" $TRAIN_ARGS
