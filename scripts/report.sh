#!/usr/bin/env bash
# REPORT.md: mAP, params, FLOPs, size and ONNX latency of every stage side by side
source "$(dirname "$0")/common.sh"
"$PY" -m yolo_slim.report.pipeline_report --run "$RUN" --data "$DATA" --img-size "$IMG"
