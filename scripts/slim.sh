#!/usr/bin/env bash
# The user's path: a pretrained darknet model and images of the user's scene -> a slim model.
#   make slim CFG=yolov3-tiny.cfg WEIGHTS=yolov3-tiny.weights DATA=my.data [LABELS=teacher]
#             [SPARSE_TARGET=0.5 | SPARSE_SPEEDUP=2] [RUN=runs/slim] [SPARSE_EPOCHS=8] [FT_EPOCHS=4] [SEED=0]
# No baseline training: WEIGHTS is the baseline and the teacher. Stages, each skipped when done
# (an interrupted training resumes): sparse training to SPARSE_TARGET of the FLOPs, or
# SPARSE_SPEEDUP x faster on onnxruntime CPU (prox: channels fade out one by one along the path,
# least important first by their Taylor score per FLOP or ms, with the teacher's KD terms) ->
# the free cut of the dead channels, counts rounded where the latency table says it pays ->
# fine-tuning with KD -> ONNX FP32 + INT8 -> REPORT.md. LABELS=teacher trains without label
# files: the teacher's detections on each batch are the targets, and every score in the report
# is agreement with WEIGHTS' detections, not accuracy.
# the slim path's own defaults (the same variable names as every stage; override any of them)
: "${RUN:=runs/slim}" "${SPARSE_EPOCHS:=8}" "${FT_EPOCHS:=4}" "${KD:=hinton}" \
  "${SPARSE_TARGET:=0.5}" "${SPARSE_SPEEDUP:=0}" "${SPARSE_RECOVER:=0.4}" "${LABELS:=files}"
if [[ $SPARSE_SPEEDUP != 0 ]]; then : "${SPARSE_WEIGHT:=latency}"; else : "${SPARSE_WEIGHT:=flops}"; fi
# a pretrained model's recipe: small LR, no warm-up, its BN statistics kept, darknet's own
# anchor assignment (best anchor only, objectness target 1); docs/real-model.md says why
# --clip-grad 10: the trees set's seed 2 diverged without it (objectness loss 1.3e10 in epoch 0)
: "${SLIM_ARGS:=--lr0 0.001 --warmup-epochs 0 --batch-size 8 --nominal-batch 8 --anchor-t 1 --iou-obj 0 --freeze-bn --clip-grad 10}"
if [[ -z ${CFG:-} || ! -f $CFG ]]; then echo "error: make slim needs CFG=<the model's darknet cfg> (got '${CFG:-}')" >&2; exit 2; fi
: "${IMG:=$(awk -F= '/^width/{gsub(/[ \t\r]/,"",$2); print $2; exit}' "$CFG")}"  # the cfg's own size
export RUN SPARSE_EPOCHS FT_EPOCHS KD SPARSE_TARGET SPARSE_SPEEDUP SPARSE_RECOVER SPARSE_WEIGHT LABELS SLIM_ARGS IMG
source "$(dirname "$0")/common.sh"
vars=$(pipeline --variables)  # the rest (DATA, WORKERS, DEVICE, ...): as set, else the recipe's
eval "$vars"
if [[ -z ${WEIGHTS:-} || ! -f $WEIGHTS ]]; then
    echo "error: make slim needs WEIGHTS=<the pretrained .weights or .pt> (got '${WEIGHTS:-}')" >&2; exit 2
fi
if [[ ! -f $DATA ]]; then echo "error: make slim needs DATA=<a darknet .data file> (got '$DATA')" >&2; exit 2; fi
stem=$(basename "${CFG%.cfg}")
TEACHER_ARGS=(--t-cfg "$CFG" --t-weights "$WEIGHTS" --kd "$KD" --labels "$LABELS")
COMMON=(--data "$DATA" --img-size "$IMG" --workers "$WORKERS" --seed "${SEED:-0}" ${DEVICE:+--device "$DEVICE"})
start=$(date +%s)
stage() { echo "=== $1 ($(( $(date +%s) - start ))s elapsed)"; }

stage baseline  # the given model, as it is: the report's first row and the teacher
mkdir -p "$RUN/baseline"
[[ -f $RUN/baseline/$stem.cfg ]] || cp "$CFG" "$RUN/baseline/$stem.cfg"
[[ -f $RUN/baseline/$stem.${WEIGHTS##*.} ]] || cp "$WEIGHTS" "$RUN/baseline/$stem.${WEIGHTS##*.}"

TARGET=(--target-flops "$SPARSE_TARGET")
[[ $SPARSE_SPEEDUP != 0 ]] && TARGET=(--target-speedup "$SPARSE_SPEEDUP")
stage sparse
if ! stage_done "$RUN/sparse"; then
    train_stage "$RUN/sparse" "$PY" distill.py --cfg "$CFG" --weights "$WEIGHTS" "${TEACHER_ARGS[@]}" \
        -sr --sparsity-update prox "${TARGET[@]}" --target-kill path \
        --target-importance taylor --sparsity-weight "$SPARSE_WEIGHT" \
        --target-recover "$SPARSE_RECOVER" --epochs "$SPARSE_EPOCHS" "${COMMON[@]}" \
        --output-dir "$RUN/sparse" $SLIM_ARGS
fi

stage prune
if ! stage_done "$RUN/pruned"; then
    rm -rf "$RUN/pruned"
    log_run "$PY" prune_channels.py --cfg "$CFG" --weights "$RUN/sparse/best.pt" --dead \
        --latency-report --img-size "$IMG" --output-dir "$RUN/pruned"
    touch "$RUN/pruned/.done"
fi

stage finetune
if ! stage_done "$RUN/finetune"; then
    train_stage "$RUN/finetune" "$PY" distill.py --cfg "$RUN/pruned/$stem.cfg" \
        --weights "$RUN/pruned/$stem.weights" "${TEACHER_ARGS[@]}" --epochs "$FT_EPOCHS" \
        "${COMMON[@]}" --output-dir "$RUN/finetune" $SLIM_ARGS
fi

stage export  # FP32 + INT8, each skipped when it exists
bash "$(dirname "$0")/export.sh"

stage report
REF=()
[[ $LABELS == teacher ]] && REF=(--reference-cfg "$CFG" --reference "$WEIGHTS")
"$PY" -m yolo_slim.report.pipeline_report --run "$RUN" --data "$DATA" --img-size "$IMG" "${REF[@]}"
echo "slim finished in $(( $(date +%s) - start ))s: $RUN/REPORT.md"
