"""The generated cfgs: structurally identical to darknet's own (AlexeyAB) cfgs, same .weights
float count, the committed cfg/ files up to date, and the demo model's shape."""
from __future__ import annotations

import pytest
import torch

from yolo_slim.darknet import zoo
from yolo_slim.darknet.cfg import parse_cfg, parse_cfg_text
from yolo_slim.nn.model import Darknet
from yolo_slim.nn.weights import weights_float_count

STANDARD = ["yolov3", "yolov3-tiny", "yolov3-spp", "yolov4", "yolov4-tiny"]


def _v(d, key, default):
    return d.get(key, default).split("#", 1)[0]


def structure(defs):
    """Per layer, everything that decides shapes, weights and outputs, with references
    resolved to absolute layer indices (so -4 and 79 compare equal)."""
    out = []
    for i, d in enumerate(defs[1:]):
        t = d["type"]
        absolute = lambda refs: tuple(i + int(r) if int(r) < 0 else int(r)  # noqa: E731
                                      for r in refs.split(","))
        if t == "convolutional":
            size = int(_v(d, "size", "1"))
            pad = size // 2 if int(_v(d, "pad", "0")) else int(_v(d, "padding", "0"))
            s = (int(_v(d, "filters", "1")), size, int(_v(d, "stride", "1")), pad,
                 int(_v(d, "groups", "1")), _v(d, "activation", "logistic"),
                 int(_v(d, "batch_normalize", "0")))
        elif t == "maxpool":
            s = (int(_v(d, "size", "1")), int(_v(d, "stride", "1")))
        elif t == "upsample":
            s = (int(_v(d, "stride", "2")),)
        elif t == "route":
            s = (absolute(_v(d, "layers", "")), int(_v(d, "groups", "1")),
                 int(_v(d, "group_id", "0")))
        elif t == "shortcut":
            s = (absolute(_v(d, "from", "")), _v(d, "activation", "linear"))
        elif t == "yolo":
            s = (tuple(int(m) for m in _v(d, "mask", "").split(",")),
                 tuple(float(a) for a in _v(d, "anchors", "").split(",")),
                 int(_v(d, "classes", "20")), int(_v(d, "num", "1")),
                 float(_v(d, "scale_x_y", "1")), int(_v(d, "new_coords", "0")))
        else:
            raise AssertionError(f"unexpected [{t}]")
        out.append((t, s))
    return out


@pytest.mark.parametrize("name", STANDARD)
def test_generated_cfg_equals_darknet_structure(name, repo_root, corpus_dir, corpus_index):
    ours = parse_cfg(str(repo_root / "cfg" / f"{name}.cfg"))
    theirs = parse_cfg(str(corpus_dir / "AlexeyAB" / f"{name}.cfg"))
    a, b = structure(ours), structure(theirs)
    assert [t for t, _ in a] == [t for t, _ in b]
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, f"layer {i}: ours {x} vs darknet {y}"
    assert ours[0]["width"] == theirs[0]["width"] and ours[0]["height"] == theirs[0]["height"]
    floats = next(e["weights_floats"] for e in corpus_index
                  if e["path"] == f"AlexeyAB/{name}.cfg")
    with torch.device("meta"):  # only shapes are needed: no allocation, no init
        assert weights_float_count(Darknet(ours)) == floats


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_committed_cfg_is_the_generated_one(name, repo_root):
    path = repo_root / "cfg" / f"{name}.cfg"
    text = path.read_text()
    assert text == zoo.cfg_text(name), f"cfg/{name}.cfg is stale: python -m yolo_slim.darknet.zoo"
    assert text.startswith(f"# {name}.cfg - ")
    # module_defs from the generator are exactly what the parser reads back from the file
    parsed = [{k: v for k, v in d.items() if not k.startswith("_")} for d in parse_cfg(str(path))]
    assert parsed == zoo.build_defs(name)


def test_demo_model_shape(repo_root):
    defs = parse_cfg(str(repo_root / "cfg" / "demo.cfg"))
    assert defs[0]["width"] == defs[0]["height"] == "320"
    convs = [int(d["filters"]) for d in defs[1:] if d["type"] == "convolutional"]
    assert convs[:11] == [16, 32, 64, 32, 64, 128, 64, 128, 256, 256, 256]
    # two residual blocks (1x1 half width, 3x3, shortcut) give layer pruning something to remove
    assert [d["from"] for d in defs[1:] if d["type"] == "shortcut"] == ["-3", "-3"]
    pools = [(d["size"], d["stride"]) for d in defs[1:] if d["type"] == "maxpool"]
    assert pools[-1] == ("2", "1") and pools.count(("2", "2")) == 5
    heads = [d for d in defs[1:] if d["type"] == "yolo"]
    assert [h["mask"] for h in heads] == ["3,4,5", "0,1,2"]
    assert all(h["classes"] == "5" for h in heads)
    anchors = [float(a) for a in heads[0]["anchors"].split(",")]
    assert len(anchors) == 12 and 16 <= min(anchors) and max(anchors) <= 130
    torch.manual_seed(0)
    model = Darknet(defs)
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    x = torch.rand(1, 3, 320, 320)
    model.train()
    assert [tuple(r.shape) for r in model(x)] == [(1, 3, 10, 10, 10), (1, 3, 20, 20, 10)]
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, 3 * 100 + 3 * 400, 10)


def test_zoo_cli_and_classes(tmp_path, capsys):
    assert zoo.main(["--out", str(tmp_path), "yolov4-tiny", "demo"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.cfg", "yolov4-tiny.cfg"]
    assert capsys.readouterr().out.count("wrote ") == 2
    assert zoo.main(["--out", str(tmp_path), "--classes", "3", "yolov3"]) == 0
    defs = parse_cfg(str(tmp_path / "yolov3.cfg"))
    for i, d in enumerate(defs):
        if d["type"] == "yolo":
            assert d["classes"] == "3" and defs[i - 1]["filters"] == str(3 * (5 + 3))
    with torch.device("meta"):
        assert len(Darknet(defs).heads) == 3
    assert zoo.main(["--out", str(tmp_path), "yolov9"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown model 'yolov9' (known: yolov3, yolov3-tiny, yolov3-spp, yolov4, "
        "yolov4-tiny, demo)")


def test_builder_references_follow_darknet_rules():
    b = zoo.CfgBuilder({"width": "32", "height": "32"})
    c0 = b.conv(8, 3)
    b.conv(8, 1)
    assert b.n == 2 and b.rel(c0) == -2
    b.route(-1, b.rel(c0))
    b.spp()
    b.head((0,), "4,4", classes=1)
    text = zoo.write_cfg(b.defs)
    model = Darknet(parse_cfg_text(text))
    assert model.module_list[2].layers == [1, 0]
    assert model.module_list[8].layers == [7, 5, 3, 2]  # spp concat: 13, 9, 5, input
