#!/usr/bin/env bash
# Issue 13 benchmark: from the demo's trained baseline, the demo's sparse recipe (5 epochs) with
#   flops:   --sparsity-update prox --sparsity-weight flops   --target-flops 0.25
#   uniform: --sparsity-update prox --sparsity-weight uniform --target-flops 0.25
#   subgrad: --sparsity-update subgradient --s 0.01 (today's demo), then prune_channels.py --target-flops 0.25
# each cut (prox: exactly the dead channels, bench/dead_cut.py) and measured before fine-tuning,
# then fine-tuned like the demo (6 epochs, KD chen from the baseline); the control is the
# unpruned baseline trained the same 5 + 6 epochs. Usage: bench/prox_bench.sh [variant...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BASE=${BASE:-runs/demo/baseline/best.pt}
DATA=${DATA:-data/shapes/shapes.data}
OUT=${OUT:-runs/prox}
TRAIN=(--img-size 256 --batch-size 16 --workers ${WORKERS:-2} --nominal-batch 16 --lr0 0.02 --cls 128 --scale 0.25
       --warmup-epochs 1 --mosaic 1.0 --ema-tau 100 --eval-interval 5 --no-progress)
sparse() {  # name, extra flags
    local d=$OUT/$1/sparse; shift
    [[ -f $d/best.pt ]] || "$PY" train_sparse.py --data "$DATA" --weights "$BASE" -sr --prune 1 --epochs 5 \
        "${TRAIN[@]}" --output-dir "$d" "$@"
}
finetune() {  # name, pruned weights
    local d=$OUT/$1/finetune
    [[ -f $d/best.pt ]] || "$PY" distill.py --weights "$2" --data "$DATA" --kd chen --t-weights "$BASE" \
        --epochs 6 "${TRAIN[@]}" --output-dir "$d"
}
for v in "${@:-flops uniform subgrad control}"; do
    for v in $v; do
    case $v in
        flops|uniform)
            sparse "$v" --s 0.01 --sparsity-update prox --sparsity-weight "$v" --target-flops 0.25
            "$PY" bench/dead_cut.py --weights "$OUT/$v/sparse/best.pt" --data "$DATA" --img-size 256 \
                --percent 0.6 --out "$OUT/$v/pruned"
            finetune "$v" "$OUT/$v/pruned/pruned.pt" ;;
        subgrad)
            sparse subgrad --s 0.01 --sparsity-update subgradient
            [[ -f $OUT/subgrad/pruned/prune_report.json ]] || "$PY" prune_channels.py \
                --weights "$OUT/subgrad/sparse/best.pt" --strategy slim --target-flops 0.25 --layer-keep 0.1 \
                --img-size 256 --data "$DATA" --output-dir "$OUT/subgrad/pruned"
            finetune subgrad "$(ls "$OUT"/subgrad/pruned/*.pt | head -1)" ;;
        control)
            local_d=$OUT/control/train
            [[ -f $local_d/best.pt ]] || "$PY" train_sparse.py --data "$DATA" --weights "$BASE" --epochs 5 \
                "${TRAIN[@]}" --output-dir "$local_d"
            finetune control "$local_d/best.pt" ;;
    esac
    done
done
