#!/usr/bin/env bash
# The INT8 file again with other calibration settings (CALIB_IMAGES, CALIB_METHOD), overwriting
# the one the export stage wrote (scripts/export.sh; FP32 written if missing), then REPORT.md
source "$(dirname "$0")/common.sh"
INT8_REDO=1 bash "$(dirname "$0")/export.sh"
bash "$(dirname "$0")/report.sh"
