#!/usr/bin/env bash
# Issue 13 benchmark: from one trained baseline (default: the demo's), the demo's sparse budget
# (5 epochs) then the demo's fine-tuning (6 epochs, KD chen from the baseline), per variant:
#   flops:   --sparsity-update prox --sparsity-weight flops   --target-flops 0.25, prune --dead
#   uniform: --sparsity-update prox --sparsity-weight uniform --target-flops 0.25, prune --dead
#   latency: --sparsity-update prox --sparsity-weight latency --target-flops 0.25, prune --dead
#            (the latency table of the deployment runtime: measure it first on an idle machine)
#   uniform-kd: uniform, with the sparse phase distilled from the baseline (distill.py -sr --kd)
#   subgrad: --sparsity-update subgradient --s 0.01 (the older tools), prune --target-flops 0.25
#   control: the unpruned baseline trained the same 5 + 6 epochs ("dense")
#   dense-ft: the baseline fine-tuned for FT_EPOCHS only (the criteria benchmark's `dense`)
# TEACHER: the fine-tuning's distillation teacher (default BASE; e.g. a control's best.pt to
# measure what a stronger teacher is worth)
# every cut measured before fine-tuning (prune_report.json: map before/after), then
# bench/prox_table.py prints the table. Usage: bench/prox_bench.sh [variant...]
# SEED=1 bench/prox_bench.sh ... trains with another seed into $OUT/seed1/.
# SPARSE_EPOCHS / FT_EPOCHS move the split of the 11-epoch budget, RECOVER is --target-recover,
# KD the fine-tuning's distillation (chen | hinton | none), TARGET the FLOPs share (0.25), for
# every variant alike; SPARSE_ARGS / FT_ARGS: extra flags for every sparse / fine-tuning run
# (e.g. FT_ARGS='--warmup-epochs 0'); FT_EPOCHS=0: no fine-tuning (the sparse run is the model).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BASE=${BASE:-runs/demo/baseline/best.pt}
DATA=${DATA:-data/shapes/shapes.data}
SEED=${SEED:-0}
SPARSE_EPOCHS=${SPARSE_EPOCHS:-5}
FT_EPOCHS=${FT_EPOCHS:-6}
RECOVER=${RECOVER:-0.3}
KD=${KD:-chen}
TARGET=${TARGET:-0.25}
OUT=${OUT:-runs/prox}
TEACHER=${TEACHER:-$BASE}
[[ $SEED != 0 ]] && OUT=$OUT/seed$SEED
# the demo's training (recipes/demo.json: 256 px, batch 16, the short schedule), as every stage trains
TRAIN=(--config "${RECIPE:-recipes/demo.json}:run" --config "${RECIPE:-recipes/demo.json}:train"
       ${WORKERS:+--workers "$WORKERS"} --no-progress --seed "$SEED")
sparse() {  # name, extra flags (SPARSE_SCRIPT=distill.py with --kd ... : sparse training with KD)
    local d=$OUT/$1/sparse; shift
    [[ -f $d/.done ]] || { "$PY" "${SPARSE_SCRIPT:-train_sparse.py}" --data "$DATA" --weights "$BASE" -sr --prune 1 \
        --epochs "$SPARSE_EPOCHS" --target-recover "$RECOVER" "${TRAIN[@]}" --output-dir "$d" "$@" \
        ${SPARSE_ARGS:-} && touch "$d/.done"; }
}
prune() {  # name, flags
    local d=$OUT/$1/pruned; shift
    [[ -f $d/prune_report.json ]] || "$PY" prune_channels.py --weights "$OUT/$(basename "$(dirname "$d")")/sparse/best.pt" \
        --strategy slim --img-size 256 --data "$DATA" --output-dir "$d" "$@"
}
finetune() {  # name, weights to fine-tune
    local d=$OUT/$1/finetune
    [[ $FT_EPOCHS == 0 ]] && return
    [[ -f $d/.done ]] || { "$PY" distill.py --weights "$2" --data "$DATA" --kd "$KD" --t-weights "$TEACHER" \
        --epochs "$FT_EPOCHS" "${TRAIN[@]}" --output-dir "$d" ${FT_ARGS:-} && touch "$d/.done"; }
}
for v in ${@:-flops uniform latency subgrad control}; do
    case $v in
        flops|uniform|latency)
            sparse "$v" --s 0.01 --sparsity-update prox --sparsity-weight "$v" --target-flops "$TARGET"
            prune "$v" --dead
            finetune "$v" "$(ls "$OUT/$v"/pruned/*.pt)" ;;
        uniform-kd)  # the sparse phase distilled from the baseline too (distill.py -sr)
            SPARSE_SCRIPT=distill.py sparse "$v" --s 0.01 --sparsity-update prox --sparsity-weight uniform \
                --target-flops "$TARGET" --kd "$KD" --t-weights "$BASE"
            prune "$v" --dead
            finetune "$v" "$(ls "$OUT/$v"/pruned/*.pt)" ;;
        subgrad)
            sparse subgrad --s 0.01 --sparsity-update subgradient
            prune subgrad --target-flops "$TARGET" --layer-keep 0.1
            finetune subgrad "$(ls "$OUT"/subgrad/pruned/*.pt)" ;;
        control)
            d=$OUT/control/train
            [[ -f $d/.done ]] || { "$PY" train_sparse.py --data "$DATA" --weights "$BASE" --epochs "$SPARSE_EPOCHS" \
                "${TRAIN[@]}" --output-dir "$d" && touch "$d/.done"; }
            finetune control "$d/best.pt" ;;
        dense-ft) finetune dense-ft "$BASE" ;;
        *) echo "unknown variant $v (flops uniform latency uniform-kd subgrad control dense-ft)" >&2; exit 2 ;;
    esac
done
