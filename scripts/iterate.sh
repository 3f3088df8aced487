#!/usr/bin/env bash
# Iterative pruning of the sparse model: ROUNDS x (cut to ROUND_FLOPS of the current FLOPs ->
# fine-tune ROUND_EPOCHS epochs with KD from the baseline), stopping after a round that loses more
# than MAX_DROP mAP@0.5 -> $RUN/iterate/round_k/{prune,train}/, summary.json. With TARGET_SPEEDUP,
# the whole run that much faster on ORT CPU instead (stops once measured there)
# (yolo-slim pipeline --stages iterate: the recipe's section iterate, TRAIN_ARGS as --train items).
# Run it again to resume after an interruption. With arguments, they all go to yolo_slim.tools.iterate
# instead of the recipe:
#   scripts/iterate.sh --cfg c.cfg --weights w.pt --data d.data --rounds 3 --output-dir runs/iter
CALLER_DIR=$PWD
source "$(dirname "$0")/common.sh"  # (cds to the repo root)
if [[ $# -gt 0 ]]; then  # paths in the arguments are the caller's: run from there
    ROOT=$PWD
    [[ $PY == /* ]] || PY=$ROOT/$PY
    cd "$CALLER_DIR"
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m yolo_slim.tools.iterate "$@"
fi
pipeline --stages iterate
