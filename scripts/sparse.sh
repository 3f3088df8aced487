#!/usr/bin/env bash
# Stage 2: sparse training (L1 on BN gamma) from the baseline -> $RUN/sparse/best.pt
source "$(dirname "$0")/common.sh"
OUT=$RUN/sparse
stage_done "$OUT" && exit 0
train_stage "$OUT" "$PY" train_sparse.py --data "$DATA" --weights "$RUN/baseline/best.pt" \
    -sr --s "$S" --prune "$PRUNE" --sparsity "$SPARSITY" \
    --epochs "$SPARSE_EPOCHS" --img-size "$IMG" --batch-size "$BATCH" --workers "$WORKERS" \
    ${DEVICE:+--device "$DEVICE"} --output-dir "$OUT" $TRAIN_ARGS
