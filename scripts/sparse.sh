#!/usr/bin/env bash
# Stage 2: sparse training (prox on BN (gamma, beta), or the L1 subgradient) from the baseline
# -> $RUN/sparse/best.pt; the dead channels meet SPARSE_SPEEDUP (measured on onnxruntime CPU every
# epoch) or, with SPARSE_SPEEDUP=0, the FLOPs share SPARSE_TARGET
source "$(dirname "$0")/common.sh"
pipeline --stages sparse "$@"
