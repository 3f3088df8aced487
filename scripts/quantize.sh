#!/usr/bin/env bash
# The INT8 file again with other calibration settings (CALIB_IMAGES, CALIB_METHOD), overwriting
# the one the export stage wrote (FP32 written if missing), then REPORT.md
source "$(dirname "$0")/common.sh"
pipeline --stages quantize,report "$@"
