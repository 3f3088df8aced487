#!/usr/bin/env bash
# Issue 13's 25-minute demo: one demo training epoch (cfg/demo.cfg, the demo's flags, seed 0),
# an older commit vs this one, interleaved REPEAT times on the same machine. Settings:
#   old        the OLD commit as it was (fp32, NCHW, 2 loader processes)
#   new        this commit's defaults (bf16 autocast where the CPU has it, channels-last,
#              --workers -1 = auto, resized images cached when the main process loads)
#   new-fp32   the same with YOLO_SLIM_CPU_BF16=0
#   new-w2     the same with --workers 2 (no cache: workers are made anew every epoch)
# Prints each run's epoch time_s (training + the end-of-run evaluation) and loss, so the
# settings can also be checked to train alike. Usage: bench/epoch_speed.sh [OLD_COMMIT] [REPEAT]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:-d51190c}
REPEAT=${2:-2}
PY=$PWD/.venv/bin/python
WT=${TMPDIR:-/tmp}/yolo_slim_old_$OLD
[[ -d $WT ]] || git worktree add -q --detach "$WT" "$OLD"
OUT=${OUT:-runs/epoch_speed}
[[ $OUT = /* ]] || OUT=$PWD/$OUT
mkdir -p "$OUT"
ARGS=(--cfg cfg/demo.cfg --data "$PWD/data/shapes/shapes.data" --epochs 1 --img-size 256 --batch-size 16
      --nominal-batch 16 --lr0 0.02 --cls 128 --scale 0.25 --warmup-epochs 1 --mosaic 1.0 --ema-tau 100
      --no-progress)
run() {  # name, dir, env..., -- extra flags
    local name=$1 dir=$2; shift 2
    local envs=() ; while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift
    local o=$OUT/$name.$r
    rm -rf "$o"
    (cd "$dir" && env "${envs[@]}" "$PY" train_sparse.py "${ARGS[@]}" "$@" --output-dir "$o" >"$o.log" 2>&1)
    tail -1 "$o/results.csv" | awk -F, -v n="$name" -v r="$r" '{printf "%-9s run %s  epoch %6.1f s  loss %s\n", n, r, $NF, $6}'
}
for r in $(seq 1 "$REPEAT"); do
    run old "$WT" -- --workers 2
    run new "$PWD" --
    run new-fp32 "$PWD" YOLO_SLIM_CPU_BF16=0 --
    run new-w2 "$PWD" -- --workers 2
done
