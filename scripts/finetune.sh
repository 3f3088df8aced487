#!/usr/bin/env bash
# Stage 4: fine-tune the pruned model with teacher distillation -> $RUN/finetune/<stem>.cfg/.weights
source "$(dirname "$0")/common.sh"
OUT=$RUN/finetune
stage_done "$OUT" && exit 0
P_CFG=$(one_file "$RUN/pruned/*.cfg")
P_W=$(one_file "$RUN/pruned/*.weights")
KD_ARGS=(--kd "$KD")
[[ $KD != none ]] && KD_ARGS+=(--t-weights "$TEACHER" ${T_CFG:+--t-cfg "$T_CFG"})
train_stage "$OUT" "$PY" distill.py --cfg "$P_CFG" --weights "$P_W" --data "$DATA" "${KD_ARGS[@]}" \
    --epochs "$FT_EPOCHS" --img-size "$IMG" --batch-size "$BATCH" --workers "$WORKERS" \
    ${DEVICE:+--device "$DEVICE"} --output-dir "$OUT" $TRAIN_ARGS
