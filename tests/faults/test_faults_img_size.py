"""--img-size follows the cfg: a multiple of its largest stride (2 for a one-conv detector, 64
for a P6 model), checked where the cfg is known, one line naming the stride when it is not."""
from __future__ import annotations

import os

import pytest

from cfgs import conv_section, tiny_detector_cfg
from faultkit import TRAIN, one_error_line, run

STRIDE2 = tiny_detector_cfg(conv_section(8, 3, 2))  # darknet runs it at any even size
STRIDE64 = tiny_detector_cfg(*[conv_section(8, 3, 2)] * 6)


@pytest.fixture
def cfgs(tiny):
    out = dict(tiny)
    for name, text in (("s2", STRIDE2), ("s64", STRIDE64)):
        out[name] = os.path.join(tiny["d"], f"{name}.cfg")
        with open(out[name], "w") as f:
            f.write(text)
    return out


def test_largest_stride_from_the_cfg():
    from yolo_slim.darknet.cfg import parse_cfg_text
    from yolo_slim.nn.model import largest_stride
    from faultkit import TINY
    assert [largest_stride(parse_cfg_text(t)) for t in (STRIDE2, TINY, STRIDE64)] == [2, 8, 64]


CASES = [  # (script, argv after --cfg {cfg}); each makes its model from the cfg alone
    ("export", "--format onnx --output {d}/m.onnx"),
    ("prune_channels", "--output-dir {d}/p_{name} --global-percent 0.3"),
    ("train_sparse", "--data {data} --epochs 1 --output-dir {d}/t"),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("script, argv", CASES, ids=[c[0] for c in CASES])
def test_img_size_is_a_multiple_of_the_cfgs_own_stride(script, argv, cfgs, capsys):
    from yolo_slim.darknet.cfg import parse_cfg
    from yolo_slim.nn.model import Darknet
    from yolo_slim.nn.weights import save_checkpoint
    extra = list(TRAIN[2:]) if script == "train_sparse" else []
    for name, size, ok in (("s2", 44, True), ("cfg", 44, False), ("s64", 96, False)):
        pt = os.path.join(cfgs["d"], f"{name}.pt")
        save_checkpoint(Darknet(parse_cfg(cfgs[name])), pt)
        args = ["--weights", pt] if script != "train_sparse" else ["--cfg", cfgs[name]]
        rc, out, err = run(script, capsys, *args, *argv.format(name=name, **cfgs).split(), "--img-size",
                           str(size), *extra)
        if ok:
            assert rc == 0, err
        else:
            stride = 8 if name == "cfg" else 64
            assert rc == 2, (name, out)
            one_error_line(err, rf"--img-size {size} must be a multiple of {stride}, the largest "
                                r"stride of the cfg")


@pytest.mark.filterwarnings("ignore")
def test_evaluate_and_detect_at_a_size_the_cfg_allows(cfgs, capsys):
    from yolo_slim.darknet.cfg import parse_cfg
    from yolo_slim.nn.model import Darknet
    from yolo_slim.nn.weights import save_checkpoint
    pt = os.path.join(cfgs["d"], "s2.pt")
    save_checkpoint(Darknet(parse_cfg(cfgs["s2"])), pt)
    rc, _, err = run("evaluate", capsys, "--weights", pt, "--data", cfgs["data"], "--img-size", "44",
                     "--workers", "0", "--device", "cpu", "--output-dir", os.path.join(cfgs["d"], "e"))
    assert rc == 0, err
    rc, _, err = run("detect", capsys, "--weights", pt, "--source", cfgs["images"], "--img-size",
                     "46", "--device", "cpu", "--output-dir", os.path.join(cfgs["d"], "det"))
    assert rc == 0, err
    rc, _, err = run("detect", capsys, "--weights", cfgs["pt"], "--source", cfgs["images"],
                     "--img-size", "44", "--output-dir", os.path.join(cfgs["d"], "det8"))
    assert rc == 2
    one_error_line(err, r"--img-size 44 must be a multiple of 8")
