"""The files a `--data` run reads, for core.paths.guard_outputs: the .data file and the image
lists it names (no output of a run may be one of them)."""
from __future__ import annotations

from yolo_slim.data.files import parse_data_file


def data_inputs(path: str | None, flag: str = "--data") -> dict[str, list[str]]:
    if not path:
        return {}
    dc = parse_data_file(path)  # a bad .data file is a one-line error here, before any write
    return {flag: [path], f"{flag} image list": sorted({dc.train, dc.valid})}
