#!/usr/bin/env bash
# The whole chain: data -> baseline -> sparse -> prune -> finetune -> export -> REPORT.md.
# Finished stages are skipped and an interrupted training stage resumes, so re-running after
# an interruption continues where it stopped. Override defaults as environment variables.
source "$(dirname "$0")/common.sh"
start=$(date +%s)
for stage in data baseline sparse prune finetune export report; do
    echo "=== $stage ($(( $(date +%s) - start ))s elapsed)"
    bash "scripts/$stage.sh"
done
echo "pipeline finished in $(( $(date +%s) - start ))s: $RUN/REPORT.md"
