#!/usr/bin/env bash
# Layer pruning alone: remove SHORTCUTS residual blocks -> $RUN/pruned-layers/
source "$(dirname "$0")/common.sh"
OUT=$RUN/pruned-layers
stage_done "$OUT" && exit 0
rm -rf "$OUT"
N=$SHORTCUTS; [[ $N -gt 0 ]] || N=2  # layer pruning alone: at least 2 blocks
log_run "$PY" prune_layers.py --cfg "$CFG" --weights "$RUN/sparse/best.pt" --shortcuts "$N" \
    --img-size "$IMG" --output-dir "$OUT"
touch "$OUT/.done"
