#!/usr/bin/env bash
# Iterative pruning of the sparse model: ROUNDS x (cut to ROUND_FLOPS of the current FLOPs ->
# fine-tune ROUND_EPOCHS epochs with KD from the baseline), stopping after a round that loses more
# than MAX_DROP mAP@0.5 -> $RUN/iterate/round_k/{prune,train}/, summary.json. With TARGET_SPEEDUP,
# the whole run that much faster on ORT CPU instead (stops once measured there)
# Run it again to resume after an interruption. With arguments, they all go to yolo_slim.tools.iterate
# instead of the defaults:
#   scripts/iterate.sh --cfg c.cfg --weights w.pt --data d.data --rounds 3 --output-dir runs/iter
CALLER_DIR=$PWD
source "$(dirname "$0")/common.sh"  # (cds to the repo root)
if [[ $# -gt 0 ]]; then  # paths in the arguments are the caller's: run from there
    ROOT=$PWD
    [[ $PY == /* ]] || PY=$ROOT/$PY
    cd "$CALLER_DIR"
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m yolo_slim.tools.iterate "$@"
fi
OUT=$RUN/iterate
stage_done "$OUT" && exit 0
# TRAIN_ARGS ("--lr0 0.02 --no-ema --lr-steps 0.5 0.8 ...") as yolo_slim.tools.iterate's --train
# FIELD=VALUE pairs: a bare --flag is true, --no-flag false, several values are comma-joined
TRAIN=()
read -ra words <<<"$TRAIN_ARGS"
for ((i = 0; i < ${#words[@]}; i++)); do
    name=${words[i]#--}
    vals=()
    while [[ $((i + 1)) -lt ${#words[@]} && ${words[i + 1]} != --* ]]; do
        i=$((i + 1)); vals+=("${words[i]}")
    done
    if [[ ${#vals[@]} -gt 0 ]]; then
        TRAIN+=(--train "$name=$(IFS=,; echo "${vals[*]}")")
    elif [[ $name == no-* ]]; then
        TRAIN+=(--train "${name#no-}=false")
    else
        TRAIN+=(--train "$name=true")
    fi
done
ROUND=(--per-round-flops "$ROUND_FLOPS" --per-round-speedup "$ROUND_SPEEDUP")
[[ -n $TARGET_SPEEDUP ]] && ROUND=(--target-speedup "$TARGET_SPEEDUP")  # the whole run; rounds derived
mkdir -p "$OUT"
log_run "$PY" -m yolo_slim.tools.iterate --cfg "$CFG" --weights "$RUN/sparse/best.pt" --data "$DATA" \
    --rounds "$ROUNDS" "${ROUND[@]}" --epochs-per-round "$ROUND_EPOCHS" \
    --max-drop "$MAX_DROP" --strategy "$STRATEGY" --importance "$IMPORTANCE" --layer-keep "$KEEP" \
    --kd "$KD" --img-size "$IMG" --batch-size "$BATCH" --train "workers=$WORKERS" \
    ${DEVICE:+--train "device=$DEVICE"} "${TRAIN[@]}" --output-dir "$OUT"
touch "$OUT/.done"
