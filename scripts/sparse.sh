#!/usr/bin/env bash
# Stage 2: sparse training (prox on BN (gamma, beta), or the L1 subgradient) from the baseline
# -> $RUN/sparse/best.pt; the dead channels meet SPARSE_SPEEDUP (measured on onnxruntime CPU every
# epoch) or, with SPARSE_SPEEDUP=0, the FLOPs share SPARSE_TARGET
source "$(dirname "$0")/common.sh"
[[ $SPARSE_SPEEDUP != 0 ]] && SPARSE_TARGET=0  # one target: the speed-up
OUT=$RUN/sparse
stage_done "$OUT" && exit 0
train_stage "$OUT" "$PY" train_sparse.py --data "$DATA" --weights "$RUN/baseline/best.pt" \
    -sr --s "$S" --prune "$PRUNE" --sparsity "$SPARSITY" --sparsity-update "$SPARSE_UPDATE" \
    --sparsity-weight "$SPARSE_WEIGHT" --target-flops "$SPARSE_TARGET" --target-speedup "$SPARSE_SPEEDUP" --target-recover "$SPARSE_RECOVER" \
    --target-kill "$SPARSE_KILL" --target-importance "$SPARSE_ORDER" \
    --epochs "$SPARSE_EPOCHS" --img-size "$IMG" --batch-size "$BATCH" --workers "$WORKERS" \
    ${DEVICE:+--device "$DEVICE"} --output-dir "$OUT" $TRAIN_ARGS
