#!/usr/bin/env bash
# What the stage scripts share. The stages themselves (their order, their commands, which cut to
# make, finished stages skipped, an interrupted one resumed, commands.txt) are `yolo-slim
# pipeline` (yolo_slim/commands/pipeline.py; make slim: --flow slim); the defaults are the
# recipe's, RECIPE (default recipes/demo.json, make slim's recipes/slim.json), one section per
# stage. A variable set in the environment or on the make command line overrides its recipe key,
# e.g.  make sparse S=0.005 EPOCHS=50
# `make help` lists every variable with its value now.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-.venv/bin/python}     # runs every stage command
TRAIN_ARGS=${TRAIN_ARGS:-}     # extra flags appended to every training stage's command
export PY TRAIN_ARGS

# yolo-slim pipeline ARGS: in the project's python, also when PY stands in for it (a recorder)
pipeline() {
    local py=.venv/bin/python
    [[ -x $py ]] || py=$PY
    "$py" -m yolo_slim.commands pipeline "$@"
}

# the helpers of a script that sequences its own stages (bench/trees_bench.sh)
# run a stage command, recording it in $RUN/commands.txt (REPORT.md shows them)
log_run() {
    mkdir -p "$RUN"
    echo "$*" >>"$RUN/commands.txt"
    "$@"
}

# stage_done DIR: true when DIR/.done exists (a finished stage is not run again)
stage_done() { [[ -f $1/.done ]] && echo "$(basename "$1"): already done ($1); 'make clean-run' to redo" ; }

# train_stage DIR CMD...: run a training command into DIR; if an earlier run was interrupted
# (DIR/last.pt without DIR/.done) the same command continues it with --resume (recorded too)
train_stage() {
    local out=$1; shift
    if [[ -f $out/last.pt ]]; then
        echo "$(basename "$out"): resuming the interrupted run in $out"
        log_run "$@" --resume "$out/last.pt"
    else
        log_run "$@"
    fi
    touch "$out/.done"
}
