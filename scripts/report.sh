#!/usr/bin/env bash
# REPORT.md: mAP, params, FLOPs, size and ONNX latency of every stage side by side
source "$(dirname "$0")/common.sh"
pipeline --stages report "$@"
