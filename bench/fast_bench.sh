#!/usr/bin/env bash
# Issue 27: the demo's recipe (sparse training to a measured 3x speed-up) against its controls,
# per seed, from one shared baseline (BASE, a finished `make demo` run folder):
#   ours    the demo recipe (SPARSE_SPEEDUP=3: latency target, latency weights, channels fading
#           along the path in Taylor order, --round-to auto)
#   flops   the demo's FLOPs recipe before (SPARSE_TARGET=0.25, uniform weights, every needed
#           class shrunk from the start, norm order), same stages; only for FLOPS_SEEDS
#   older   the older tools: the L1 subgradient on gamma, then a |gamma| cut to ours' measured
#           speed-up (prune_channels.py --target-speedup, closed loop), the same fine-tuning
#   scratch ours' slim cfg trained from fresh weights for the whole budget (baseline + sparse +
#           fine-tuning epochs)
# then bench/fast_table.py times every final model interleaved and writes bench/results/fast.md.
#   bash bench/fast_bench.sh [BASE=runs/demo27] [SEEDS="0 1 2"] [FLOPS_SEEDS=0] [OUT=runs/fast]
source "$(dirname "$0")/../scripts/common.sh"
vars=$(pipeline --variables)  # EPOCHS, IMG, BATCH, ...: as set, else the demo recipe's
eval "$vars"
BASE=${BASE:-runs/demo27}
SEEDS=${SEEDS:-0 1 2}
FLOPS_SEEDS=${FLOPS_SEEDS:-0}
OUT=${OUT:-runs/fast}
BUDGET=$((EPOCHS + SPARSE_EPOCHS + FT_EPOCHS))
ARGS0=$TRAIN_ARGS  # extra flags on top of the recipe (none by default)

arm() {  # arm NAME SEED [VAR=value ...]: sparse -> prune -> finetune -> export into OUT/NAME-sSEED
    local name=$1 seed=$2; shift 2
    local r=$OUT/$name-s$seed
    mkdir -p "$r"
    [[ -d $r/baseline ]] || cp -r "$BASE/baseline" "$r/"
    env RUN="$r" TRAIN_ARGS="$ARGS0 --seed $seed" "$@" bash -c \
        'bash scripts/sparse.sh && bash scripts/prune.sh && bash scripts/finetune.sh && bash scripts/export.sh'
}

for s in $SEEDS; do
    echo "=== seed $s: ours $(date +%T)"
    arm ours "$s"
    if [[ " $FLOPS_SEEDS " == *" $s "* ]]; then
        echo "=== seed $s: flops $(date +%T)"
        arm flops "$s" SPARSE_SPEEDUP=0 SPARSE_TARGET=0.25 SPARSE_WEIGHT=uniform SPARSE_KILL=all SPARSE_ORDER=norm
    fi
    echo "=== seed $s: older $(date +%T)"
    r=$OUT/older-s$s
    x=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['latency']['speedup'])" \
        "$OUT/ours-s$s/pruned/prune_report.json")
    if [[ ! -f $r/pruned/.done ]]; then
        mkdir -p "$r" && { [[ -d $r/baseline ]] || cp -r "$BASE/baseline" "$r/"; }
        RUN=$r TRAIN_ARGS="$ARGS0 --seed $s" SPARSE_UPDATE=subgradient bash scripts/sparse.sh
        rm -rf "$r/pruned"
        "$PY" prune_channels.py --cfg "$CFG" --weights "$r/sparse/best.pt" --target-speedup "$x" \
            --img-size "$IMG" --output-dir "$r/pruned" && touch "$r/pruned/.done"
    fi
    RUN=$r TRAIN_ARGS="$ARGS0 --seed $s" bash -c 'bash scripts/finetune.sh && bash scripts/export.sh'
    echo "=== seed $s: scratch $(date +%T)"
    r=$OUT/scratch-s$s
    if [[ ! -f $r/.done ]]; then
        "$PY" train_sparse.py --cfg "$OUT/ours-s$s/pruned/$(basename "${CFG%.cfg}").cfg" --data "$DATA" \
            --epochs "$BUDGET" --img-size "$IMG" --batch-size "$BATCH" --workers "$WORKERS" \
            --output-dir "$r" --config "$RECIPE:train" $ARGS0 --seed "$s" && touch "$r/.done"
    fi
done
echo "=== table $(date +%T)"
"$PY" bench/fast_table.py --base "$BASE" --out-dir "$OUT" --seeds $SEEDS --img-size "$IMG" \
    --out bench/results/fast.md
