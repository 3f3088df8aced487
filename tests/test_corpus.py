"""Every cfg of the real darknet corpus (../shared/darknet-cfg): the ones whose layers and key
values the builder supports build, run at 64 px with the output size an independent darknet
shape simulation predicts and need exactly index.json's float count; every other one is
refused with a CfgError naming the layer (or key) and file:line.

    .venv/bin/python -m tests.test_corpus    # prints the built / refused lists with reasons
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from yolo_slim.darknet.cfg import ALIASES, CfgError, parse_cfg
from yolo_slim.nn.model import Darknet
from yolo_slim.prune.verify import verification_size
from yolo_slim.sections import SECTIONS
from yolo_slim.nn.weights import weights_float_count

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "darknet-cfg"
INDEX = json.loads((CORPUS / "index.json").read_text()) if (CORPUS / "index.json").is_file() else []

# index.json feature tags whose key values the builder refuses, and what the message says
REFUSED_FEATURES = {
    "xnor": r"xnor=1 is not supported",
    "binary": r"binary=1 is not supported",
    "antialiasing": r"antialiasing=\d is not supported",
    "weighted-shortcut": r"weighted shortcut",
    "share_index": r"share_index is not supported",
    "maxpool_depth": r"maxpool_depth=\d+ is not supported",
    "upsample-negative": r"downsampling upsample",
}
SECTION = re.compile(r"\[([^\]]*)\]")
# corpus files whose values are broken in a way index.json does not tag: (file, message)
BROKEN_VALUES = {
    # "61,45    61,45" lacks a comma: darknet strips it to "61,4561,45" and reads shifted anchors
    "AlexeyAB/cspx-p7-mish_hp.cfg": r"\[yolo\] anchors= has 31 values, not \(w, h\) pairs",
}


def raw_sections(path: Path) -> list[tuple[str, int]]:
    """(section name, line) straight from the file text with darknet's strip rule."""
    out = []
    for lineno, raw in enumerate(path.read_text().split("\n"), start=1):
        line = re.sub(r"\s", "", raw)
        if line.startswith("["):
            out.append((ALIASES.get(line[1:-1], line[1:-1]), lineno))
    return out


def num(v: str) -> str:
    return v.split("#", 1)[0]


def simulate(defs: list[dict], h: int, w: int) -> tuple[list[tuple[int, int, int]], int]:
    """darknet's shape arithmetic (darknet-format.md §2), written independently of the
    builder: per layer (h, w, c), plus the .weights float count."""
    net = defs[0]
    shapes: list[tuple[int, int, int]] = []
    c, floats = int(num(net.get("channels", "3"))), 0
    for i, d in enumerate(defs[1:]):
        g = lambda k, dflt: int(num(d[k])) if k in d else dflt  # noqa: E731
        prev = shapes[-1] if shapes else (h, w, c)
        t = d["type"]
        if t == "convolutional":
            size, stride, f = g("size", 1), g("stride", 1), g("filters", 1)
            sx = g("stride_x", -1) if g("stride_x", -1) >= 1 else stride
            sy = g("stride_y", -1) if g("stride_y", -1) >= 1 else stride
            pad = size // 2 if g("pad", 0) else g("padding", 0)
            groups = max(1, g("groups", 1))
            shapes.append(((prev[0] + 2 * pad - size) // sy + 1,
                           (prev[1] + 2 * pad - size) // sx + 1, f))
            floats += (4 * f if g("batch_normalize", 0) else f) + f * prev[2] // groups * size ** 2
        elif t == "maxpool":
            stride = g("stride", 1)
            size = g("size", stride)
            padding = g("padding", size - 1)
            shapes.append(((prev[0] + padding - size) // stride + 1,
                           (prev[1] + padding - size) // stride + 1, prev[2]))
        elif t == "upsample":
            s = g("stride", 2)
            shapes.append((prev[0] * s, prev[1] * s, prev[2]))
        elif t == "route":
            refs = [int(r) for r in num(d["layers"]).split(",")]
            src = [shapes[i + r if r < 0 else r] for r in refs]
            groups = g("groups", 1)
            shapes.append((src[0][0], src[0][1], sum(s[2] // groups for s in src)))
        elif t in ("shortcut", "yolo", "sam", "dropout"):
            shapes.append(prev)
        elif t == "scale_channels":  # the scaled layer's shape
            r = int(num(d["from"]))
            shapes.append(shapes[i + r if r < 0 else r])
        elif t == "reorg3d":
            s = g("stride", 1)
            shapes.append((prev[0] // s, prev[1] // s, prev[2] * s * s))
        elif t == "avgpool":
            shapes.append((1, 1, prev[2]))
        else:
            raise AssertionError(f"simulate: no rule for [{t}]")
    return shapes, floats


def expected_refusal(entry: dict) -> tuple[str, str | None, int | None]:
    """('section', name, line) | ('key', None, None) | ('no-yolo', ...) | ('build', ...)."""
    path = CORPUS / entry["path"]
    for name, line in raw_sections(path)[1:]:
        if name not in SECTIONS:
            return "section", name, line
    if set(entry["features"]) & set(REFUSED_FEATURES) or entry["path"] in BROKEN_VALUES:
        return "key", None, None
    if "yolo" not in entry["counts"]:
        return "no-yolo", None, None
    return "build", None, None


def check_entry(entry: dict) -> str:
    """Run every assertion for one corpus cfg; returns a one-line summary for the report."""
    path = CORPUS / entry["path"]
    kind, name, line = expected_refusal(entry)
    if kind != "build":
        with pytest.raises(CfgError) as e:
            Darknet(parse_cfg(str(path)))
        msg = str(e.value)
        assert "\n" not in msg
        if kind == "no-yolo":
            assert msg == f"{path}: the cfg has no [yolo] layer; only detectors are supported"
            return "no [yolo] layer"
        m = re.match(rf"^{re.escape(str(path))}:(\d+): (?:layer type )?\[(\w+)\] ", msg)
        assert m, msg
        where, section = int(m.group(1)), m.group(2)
        # the line named is the header of a section of the type the message names
        assert (section, where) in raw_sections(path), msg
        if kind == "section":
            assert (section, where) == (name, line), msg
            assert f"layer type [{name}] is not supported" in msg
        else:
            pats = [REFUSED_FEATURES[f] for f in entry["features"] if f in REFUSED_FEATURES]
            pats += [BROKEN_VALUES[entry["path"]]] if entry["path"] in BROKEN_VALUES else []
            assert any(re.search(p, msg) for p in pats), msg
        return msg.split(": ", 1)[1]

    defs = parse_cfg(str(path))
    model = Darknet(defs)
    net_h, net_w = entry["net"]["h"], entry["net"]["w"]
    shapes, floats = simulate(defs, net_h, net_w)
    assert len(model.module_list) == entry["n_layers"] == len(shapes)
    assert model.out_channels == [s[2] for s in shapes]
    assert list(shapes[-1]) == entry["out"]  # the index's final shape at the net size
    assert weights_float_count(model) == floats == entry["weights_floats"]
    # the smallest input >= 64 px that keeps every spatial map >= 2x2 (stride 32: 64 px)
    hs, ws = verification_size(defs)
    assert 64 <= hs <= 256 and 64 <= ws <= 256, (hs, ws)
    shapes_s, _ = simulate(defs, hs, ws)
    heads = [(i, d) for i, d in enumerate(defs[1:]) if d["type"] == "yolo"]
    n_boxes = sum(len(num(d["mask"]).split(",")) * shapes_s[i][0] * shapes_s[i][1]
                  for i, d in heads)
    nc = int(num(heads[0][1]["classes"]))
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, hs, ws))
    assert tuple(out.shape) == (1, n_boxes, 5 + nc)
    assert torch.isfinite(out[..., :2]).all()
    return f"built: {len(heads)} heads, {entry['weights_floats']} floats, N@{hs}={n_boxes}"


@pytest.mark.skipif(not INDEX, reason="darknet cfg corpus not found")
@pytest.mark.parametrize("entry", INDEX, ids=[e["path"] for e in INDEX])
def test_corpus_cfg(entry):
    check_entry(entry)


@pytest.mark.skipif(not INDEX, reason="darknet cfg corpus not found")
def test_corpus_expectations_cover_the_families():
    built = {e["path"] for e in INDEX if expected_refusal(e)[0] == "build"}
    for must in ("yolov3.cfg", "yolov3-tiny.cfg", "yolov3-spp.cfg", "yolov4.cfg",
                 "yolov4-tiny.cfg", "yolov4-csp.cfg", "yolov4x-mish.cfg", "yolov4-p6.cfg",
                 "yolov7.cfg", "yolov7-tiny.cfg", "yolov3_5l.cfg", "yolov4-tiny-3l.cfg"):
        assert f"AlexeyAB/{must}" in built
    assert len(built) >= 43
    # the AlexeyAB cfgs refused before the section registry grew [sam], [scale_channels],
    # [reorg3d], [avgpool], [dropout] and darknet's partial-channel [shortcut]
    for must in ("yolov3-tiny-prn.cfg", "csresnext50-panet-spp.cfg", "cspx-p7-mish.cfg",
                 "yolov4-sam-mish-csp-reorg-bfm.cfg", "enet-coco.cfg"):
        assert f"AlexeyAB/{must}" in built


if __name__ == "__main__":
    torch.set_num_threads(2)
    built, refused = [], []
    for e in INDEX:
        try:
            note = check_entry(e)
        except BaseException as ex:  # noqa: BLE001 - a report, not a test
            note = f"UNEXPECTED {type(ex).__name__}: {ex}"
        (built if note.startswith("built") else refused).append(f"{e['path']}: {note}")
    print(f"built ({len(built)}):", *built, f"\nrefused ({len(refused)}):", *refused, sep="\n  ")
    sys.exit(any("UNEXPECTED" in x for x in built + refused))
