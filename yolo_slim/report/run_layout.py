"""The run folder of a pipeline (`make demo`, `yolo-slim pipeline`), declared once: the folder each
stage writes, the marker of a finished stage, the checkpoint an interrupted training leaves, and
the file of the commands that made the run. commands/pipeline.py runs the stages into it;
report/pipeline_report.py reads their models and commands from it."""
from __future__ import annotations

import os
import shlex
from typing import Sequence

# one folder per stage, under the run folder
BASELINE, SPARSE, PRUNED, FINETUNE, EXPORT = "baseline", "sparse", "pruned", "finetune", "export"
PRUNED_LAYERS = "pruned-layers"                       # make prune-layers: blocks only
SENSITIVITY, PRUNED_SENSITIVITY = "sensitivity", "pruned_sensitivity"
ITERATE, UNSTRUCTURED = "iterate", "unstructured"

DONE = ".done"           # in a stage's folder: it finished, and is not run again
LAST = "last.pt"         # in a training stage's folder without DONE: the run to resume
BEST = "best.pt"         # a training stage's model
COMMANDS = "commands.txt"
REPORT = "REPORT.md"

# the models REPORT.md compares, in order: row name, folder, how the stage stores its model
# ("run": a training run's best.pt; "files": <stem>.cfg + <stem>.weights)
MODEL_STAGES = (("baseline", BASELINE, "run"), ("sparse", SPARSE, "run"),
                ("pruned", PRUNED, "files"), ("fine-tuned", FINETUNE, "files"))


class RunFolder:
    """Paths and markers of one run folder."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def done(self, folder: str) -> bool:
        return os.path.isfile(self.path(folder, DONE))

    def mark_done(self, folder: str) -> None:
        os.makedirs(self.path(folder), exist_ok=True)
        open(self.path(folder, DONE), "a").close()

    def interrupted(self, folder: str) -> str | None:
        """The checkpoint an unfinished training stage left (its command continues with
        --resume), else None."""
        last = self.path(folder, LAST)
        return last if os.path.isfile(last) and not self.done(folder) else None

    def record(self, argv: Sequence[str]) -> None:
        """Append a command to <run>/commands.txt (REPORT.md shows them), shell-quoted."""
        os.makedirs(self.root, exist_ok=True)
        with open(self.path(COMMANDS), "a") as f:
            f.write(shlex.join(argv) + "\n")
