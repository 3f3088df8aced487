#!/usr/bin/env bash
# Issue 26 benchmark, the tree crowns (real photos, 1 class, 416 px tiles, make real-assets):
#   1. the user's baseline: the COCO yolov3-tiny (80 classes) transferred to a 1-class copy of
#      its cfg (every layer but the two heads loaded) and fine-tuned on the training tiles
#   2. per TARGETS x SEEDS, from that baseline (also the KD teacher of every run):
#      new-T-sS: `make slim`'s path (bash scripts/slim.sh: prox sparse training with KD to
#                FLOPs share T, the free cut of the dead channels, KD fine-tuning, ONNX, REPORT.md)
#      old-T-sS: the older tools at the same FLOPs: subgradient sparse training (s*sign(γ),
#                --s OLD_S, no target), prune_channels.py --target-flops T (smallest |γ| cut, β
#                folded), then the same KD fine-tuning; the sparse and fine-tuning stages get
#                exactly the new recipe's flags (epochs, KD, recipes/slim.json:pretrained + SLIM_ARGS, seed)
#   3. bench/trees_table.py scores every stage's model on the held-out photos (valid split)
#      into bench/results/trees.md (OUT_MD)
#   SEEDS="0 1 2" TARGETS="0.5 0.25" BASE_EPOCHS=30 bash bench/trees_bench.sh
# Every stage is skipped when done (an interrupted training resumes). SPARSE_EPOCHS, FT_EPOCHS,
# KD and SPARSE_RECOVER default to make slim's own (recipes/slim.json); BASE_ARGS are the
# baseline's training flags. ROOT (default runs/trees) holds every run and commands.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# make slim's values (recipes/slim.json, or as set), so the bench runs what `make slim` runs
slim_default() {
    local v
    v=$(.venv/bin/python -m yolo_slim.commands pipeline --flow slim --variables | sed -n "s/^$1=\([^ ]*\) .*/\1/p")
    [[ -n $v ]] || { echo "error: no value of $1 in yolo-slim pipeline --flow slim --variables" >&2; exit 2; }
    echo "$v"
}
ROOT=${ROOT:-runs/trees}
SEEDS=${SEEDS:-0 1 2}
TARGETS=${TARGETS:-0.5 0.25}
BASE_EPOCHS=${BASE_EPOCHS:-30}
SPARSE_EPOCHS=${SPARSE_EPOCHS:-$(slim_default SPARSE_EPOCHS)}
FT_EPOCHS=${FT_EPOCHS:-$(slim_default FT_EPOCHS)}
KD=${KD:-$(slim_default KD)}
SPARSE_RECOVER=${SPARSE_RECOVER:-$(slim_default SPARSE_RECOVER)}
SLIM_ARGS=${SLIM_ARGS:-}            # more training flags after recipes/slim.json's pretrained section
OLD_S=${OLD_S:-0.001}              # the older recipe's subgradient rate
IMG=${IMG:-416}
# the baseline: pretrained backbone, fresh 1-class heads: a fine-tuning LR (above slim's 0.001,
# the heads start from scratch), 1 warm-up epoch, mosaic for 65 tiles; darknet's anchor
# assignment as in SLIM_ARGS, so every later stage trains the loss the baseline was trained on
BASE_ARGS=${BASE_ARGS:---batch-size 8 --nominal-batch 8 --lr0 0.005 --warmup-epochs 1 --mosaic 1.0 --scale 0.25 --ema-tau 100 --anchor-t 1 --iou-obj 0 --eval-interval 5}
OUT_MD=${OUT_MD:-bench/results/trees.md}
RUN=$ROOT  # log_run appends every command to $ROOT/commands.txt
source scripts/common.sh
# log_run, with the arguments shell-quoted (SLIM_ARGS holds spaces): commands.txt runs as it is
log_quoted() { printf '%q ' "$@" | sed 's/ $//' >>"$ROOT/commands.txt"; echo >>"$ROOT/commands.txt"; "$@"; }
asset() { "$PY" -c "from yolo_slim.data.real_assets import real_asset; print(real_asset('$1'))"; }
TREES=$(asset trees) COCO=$(asset coco-tiny)
DATA=$TREES/trees.data
CFG=$ROOT/trees-tiny.cfg
BASE=$ROOT/baseline/best.pt
mkdir -p "$ROOT"
echo "# $(date -u +%FT%TZ) SEEDS='$SEEDS' TARGETS='$TARGETS' BASE_EPOCHS=$BASE_EPOCHS" \
     "SPARSE_EPOCHS=$SPARSE_EPOCHS FT_EPOCHS=$FT_EPOCHS KD=$KD OLD_S=$OLD_S bash bench/trees_bench.sh" \
     >>"$ROOT/commands.txt"

echo "=== 1-class cfg, baseline"
[[ -f $CFG ]] || "$PY" -c "import sys; from yolo_slim.darknet.cfg import parse_cfg, save_cfg, set_classes
save_cfg(set_classes(parse_cfg(sys.argv[1]), 1), sys.argv[2])" "$COCO/yolov3-tiny.cfg" "$CFG"
stage_done "$ROOT/baseline" || train_stage "$ROOT/baseline" "$PY" train_sparse.py --cfg "$CFG" \
    --weights "$COCO/yolov3-tiny.weights" --transfer --weights-cfg "$COCO/yolov3-tiny.cfg" \
    --data "$DATA" --epochs "$BASE_EPOCHS" --img-size "$IMG" ${WORKERS:+--workers "$WORKERS"} \
    ${DEVICE:+--device "$DEVICE"} --no-progress --output-dir "$ROOT/baseline" $BASE_ARGS

stem=$(basename "${CFG%.cfg}")
COMMON=(--data "$DATA" --img-size "$IMG" ${WORKERS:+--workers "$WORKERS"} ${DEVICE:+--device "$DEVICE"} --no-progress)
TEACHER_ARGS=(--t-cfg "$CFG" --t-weights "$BASE" --kd "$KD" --labels files)
for T in $TARGETS; do
    for SEED in $SEEDS; do
        new=$ROOT/new-$T-s$SEED old=$ROOT/old-$T-s$SEED
        echo "=== target $T, seed $SEED: new recipe ($new)"
        [[ -f $new/REPORT.md ]] || log_quoted env RUN="$new" CFG="$CFG" WEIGHTS="$BASE" DATA="$DATA" \
            IMG="$IMG" SPARSE_TARGET="$T" SPARSE_EPOCHS="$SPARSE_EPOCHS" FT_EPOCHS="$FT_EPOCHS" \
            KD="$KD" SPARSE_RECOVER="$SPARSE_RECOVER" LABELS=files \
            SEED="$SEED" SLIM_ARGS="$SLIM_ARGS" bash scripts/slim.sh
        echo "=== target $T, seed $SEED: older recipe ($old)"
        stage_done "$old/sparse" || train_stage "$old/sparse" "$PY" distill.py --cfg "$CFG" \
            --weights "$BASE" "${TEACHER_ARGS[@]}" -sr --sparsity-update subgradient --s "$OLD_S" \
            --epochs "$SPARSE_EPOCHS" "${COMMON[@]}" --output-dir "$old/sparse" --config recipes/slim.json:pretrained $SLIM_ARGS --seed "$SEED"
        if ! stage_done "$old/pruned"; then
            rm -rf "$old/pruned"
            # the layer floor of the new recipe's --target-layer-keep default (0.1)
            log_run "$PY" prune_channels.py --cfg "$CFG" --weights "$old/sparse/best.pt" \
                --target-flops "$T" --layer-keep 0.1 --img-size "$IMG" --output-dir "$old/pruned"
            touch "$old/pruned/.done"
        fi
        stage_done "$old/finetune" || train_stage "$old/finetune" "$PY" distill.py \
            --cfg "$old/pruned/$stem.cfg" --weights "$old/pruned/$stem.weights" "${TEACHER_ARGS[@]}" \
            --epochs "$FT_EPOCHS" "${COMMON[@]}" --output-dir "$old/finetune" --config recipes/slim.json:pretrained $SLIM_ARGS --seed "$SEED"
    done
done

echo "=== table"
"$PY" bench/trees_table.py --root "$ROOT" --data "$DATA" --img-size "$IMG" --out "$OUT_MD"
