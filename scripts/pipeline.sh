#!/usr/bin/env bash
# The whole chain: data -> baseline -> sparse -> prune -> finetune -> export -> REPORT.md, as
# `yolo-slim pipeline` runs it from the recipe (RECIPE, default recipes/demo.json). Finished
# stages are skipped and an interrupted training stage resumes, so re-running after an
# interruption continues where it stopped. Override any recipe key with its variable
# (`make help` lists them); arguments go to the command, e.g. --dry-run.
source "$(dirname "$0")/common.sh"
pipeline "$@"
