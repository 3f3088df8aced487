#!/usr/bin/env bash
# Defaults shared by every stage script and the Makefile. Override any of them from the
# environment or the make command line, e.g.  make sparse S=0.005 EPOCHS=50
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-.venv/bin/python}
CFG=${CFG:-cfg/demo.cfg}                    # the model to slim
DATA=${DATA:-data/shapes/shapes.data}       # darknet .data file (default: the synthetic set)
WEIGHTS=${WEIGHTS:-}                        # optional pretrained start for the baseline
TRANSFER=${TRANSFER:-0}                     # 1: WEIGHTS are for another cfg: load the layers that fit
WEIGHTS_CFG=${WEIGHTS_CFG:-}                # with TRANSFER=1: the cfg WEIGHTS were written for
RUN=${RUN:-runs/demo}                       # every stage reads/writes under this folder
IMG=${IMG:-256}
BATCH=${BATCH:-16}
DEVICE=${DEVICE:-}                          # '' = auto (cuda if available), cpu, cuda:0
WORKERS=${WORKERS:--1}                      # loader processes, -1 = auto (0 on <= 4 cores: faster there)
EPOCHS=${EPOCHS:-20}                        # baseline epochs
SPARSE_EPOCHS=${SPARSE_EPOCHS:-5}
FT_EPOCHS=${FT_EPOCHS:-6}
S=${S:-0.01}                                # sparsity rate (L1 on BN gamma)
SPARSITY=${SPARSITY:-constant}              # constant | global-decay | local-decay
SPARSE_UPDATE=${SPARSE_UPDATE:-prox}        # prox: dead channels exactly (0,0) | subgradient (older tools)
SPARSE_WEIGHT=${SPARSE_WEIGHT:-auto}        # penalty per channel: uniform | flops | latency (what removing it
                                            # saves) | auto (latency with SPARSE_SPEEDUP, else uniform)
SPARSE_SPEEDUP=${SPARSE_SPEEDUP:-3}         # prox: the dead channels make the model X times faster on
                                            # onnxruntime CPU (measured every epoch; 0 = SPARSE_TARGET)
SPARSE_TARGET=${SPARSE_TARGET:-0.25}        # with SPARSE_SPEEDUP=0: the dead channels leave this share of
                                            # FLOPs (0 too = fixed S, then PERCENT/SHORTCUTS decide the cut)
# the subgradient never makes a channel exactly dead: no target, PERCENT/SHORTCUTS cut
if [[ $SPARSE_UPDATE == subgradient ]]; then SPARSE_TARGET=0 SPARSE_SPEEDUP=0; fi
SPARSE_KILL=${SPARSE_KILL:-path}            # prox with a target: fade out only what the path needs by now (path)
                                            # or shrink every class the target needs from the start (all)
SPARSE_ORDER=${SPARSE_ORDER:-taylor}        # which classes go first: taylor (loss change of zeroing) | norm
SPARSE_RECOVER=${SPARSE_RECOVER:-0.3}       # with SPARSE_TARGET: last share of the run, dead set frozen, s = 0
PRUNE=${PRUNE:-1}                           # 0: no conv that meets a shortcut, 1: all (slim)
STRATEGY=${STRATEGY:-slim}                  # normal | shortcut | slim
PERCENT=${PERCENT:-0.6}                     # share of prunable channels (lowest |gamma|) cut
KEEP=${KEEP:-0.1}                           # every layer keeps at least KEEP x its channels
SHORTCUTS=${SHORTCUTS:-1}                   # residual blocks removed (layer pruning; 0 = none)
LATENCY_REPORT=${LATENCY_REPORT:-1}         # prune report: predicted + measured ORT CPU latency (table cached)
IMPORTANCE=${IMPORTANCE:-bn}                # channel score: bn (|gamma|) | l1 | rank (HRank, uses DATA)
KD=${KD:-chen}                              # none | hinton | chen
TEACHER=${TEACHER:-$RUN/baseline/best.pt}   # distillation teacher (.pt or .weights)
T_CFG=${T_CFG:-}                            # teacher cfg, not needed for a .pt teacher
CALIB_IMAGES=${CALIB_IMAGES:-100}           # export: INT8 calibration images from DATA's train list
CALIB_METHOD=${CALIB_METHOD:-minmax}        # export: INT8 ranges by minmax | entropy | percentile
# beyond one-shot slimming (make sensitivity / iterate / unstructured)
TARGET_FLOPS=${TARGET_FLOPS:-0.5}           # sensitivity: FLOPs target of the chosen per-layer cuts
MAX_DROP=${MAX_DROP:-0.05}                  # largest mAP@0.5 drop: per unit (sensitivity), per run (iterate)
ROUNDS=${ROUNDS:-3}                         # iterate: rounds of prune -> fine-tune
ROUND_FLOPS=${ROUND_FLOPS:-0.8}             # iterate: each round keeps this share of the current FLOPs
ROUND_SPEEDUP=${ROUND_SPEEDUP:-0}           # iterate: > 1 = each round this much faster on ORT CPU (instead of ROUND_FLOPS)
ROUND_EPOCHS=${ROUND_EPOCHS:-2}             # iterate: fine-tuning epochs per round
TARGET_SPEEDUP=${TARGET_SPEEDUP:-}          # sensitivity / iterate: X times faster on ORT CPU instead of
                                            # TARGET_FLOPS / ROUND_FLOPS (iterate: the whole run); '' = off
AMOUNT=${AMOUNT:-0.5}                       # unstructured: share of conv weights zeroed
# extra flags for every training stage; the default is the short-schedule recipe the demo
# needs on 2 CPU cores (no gradient accumulation, higher LR and class gain, 1 warm-up epoch)
TRAIN_ARGS=${TRAIN_ARGS:---nominal-batch 16 --lr0 0.02 --cls 128 --scale 0.25 --warmup-epochs 1 --mosaic 1.0 --ema-tau 100 --eval-interval 5}

# run a stage command, recording it in $RUN/commands.txt (REPORT.md shows them)
log_run() {
    mkdir -p "$RUN"
    echo "$*" >>"$RUN/commands.txt"
    "$@"
}

# the single file matching a pattern, or a clear error
one_file() {
    local matches=($1)
    if [[ ${#matches[@]} -ne 1 || ! -f ${matches[0]} ]]; then
        echo "error: expected exactly one $1 (run the previous stage first)" >&2
        exit 2
    fi
    echo "${matches[0]}"
}

# stage_done DIR: true when DIR/.done exists (a finished stage is not run again)
stage_done() { [[ -f $1/.done ]] && echo "$(basename "$1"): already done ($1); 'make clean-run' to redo" ; }

# train_stage DIR CMD...: run a training command into DIR; if an earlier run was interrupted
# (DIR/last.pt without DIR/.done) the same command continues it with --resume
train_stage() {
    local out=$1; shift
    if [[ -f $out/last.pt ]]; then
        echo "$(basename "$out"): resuming the interrupted run in $out"
        "$@" --resume "$out/last.pt"
    else
        log_run "$@"
    fi
    touch "$out/.done"
}
