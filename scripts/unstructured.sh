#!/usr/bin/env bash
# Unstructured magnitude pruning of the baseline (AMOUNT of the conv weights zeroed) beside
# channel pruning to the same share of FLOPs: sizes, gzip sizes and measured latency
# -> $RUN/unstructured/{unstructured_report.json, unstructured_summary.txt, <stem>.cfg/.weights}
source "$(dirname "$0")/common.sh"
pipeline --stages unstructured "$@"
