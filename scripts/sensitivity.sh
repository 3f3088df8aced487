#!/usr/bin/env bash
# Sensitivity analysis of the sparse model, then channel pruning with the per-layer cuts chosen
# for TARGET_FLOPS (or, when set, TARGET_SPEEDUP: the latency table's prediction)
# -> $RUN/sensitivity/{sensitivity.md,.csv,.png, ratios.json}, $RUN/pruned_sensitivity/<stem>.*
# (fine-tune the result like the pruned model: make finetune with its files, or distill.py)
source "$(dirname "$0")/common.sh"
pipeline --stages sensitivity "$@"
