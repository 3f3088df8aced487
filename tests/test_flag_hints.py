"""Flags are taken only as spelled (core.cli.Parser has allow_abbrev=False): `--conf` matched
both --config and --conf-thres, and any flag added later can make a working abbreviation
ambiguous. An unknown flag is one line naming the flags nearest to it, exit status 2."""
from __future__ import annotations

import pytest

from yolo_slim.commands import detect, evaluate, export
from yolo_slim.core.cli import Parser
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.core.flag_hints import nearest_flags, unrecognized

CONF = "error: unrecognized arguments: --conf 0.3 (--conf: did you mean --conf-thres or --config?)"


@pytest.mark.parametrize("main, argv", [
    (detect.main, ["--weights", "w.pt", "--source", "imgs"]),
    (evaluate.main, ["--weights", "w.pt", "--data", "d.data"]),
    (export.main, ["--weights", "w.pt", "--format", "onnx"]),
])
def test_conf_is_one_line_naming_the_nearest_flags(main, argv, capsys):
    assert main([*argv, "--conf", "0.3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [CONF]
    assert main([*argv, "--conf=0.3"]) == 2  # the same with '='
    assert capsys.readouterr().err.splitlines() == [CONF.replace("--conf 0.3 (", "--conf=0.3 (")]


def parser() -> Parser:
    p = Parser(prog="t")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--lr0", type=float, default=0.01)
    return p


def test_an_abbreviation_is_refused_even_when_it_names_one_flag():
    p = parser()
    assert p.parse_args(["--epochs", "3", "--img-size", "32"]).epochs == 3  # as spelled: fine
    with pytest.raises(YoloSlimError) as e:
        p.parse_args(["--epoch", "3"])  # argparse's default would have read it as --epochs
    assert str(e.value) == "unrecognized arguments: --epoch 3 (--epoch: did you mean --epochs?)"
    # a later flag cannot change what a command line means: it was never abbreviated
    p.add_argument("--epochs-per-round", type=int, default=1)
    with pytest.raises(YoloSlimError, match=r"--epoch: did you mean --epochs or --epochs-per-round\?"):
        p.parse_args(["--epoch", "3"])


def test_nearest_flags_prefixes_then_spellings():
    flags = ["--config", "--conf-thres", "--cfg", "--img-size", "--iou-thres", "-h", "--help"]
    assert nearest_flags("--conf", flags) == ["--conf-thres", "--config"]
    assert nearest_flags("--conf=0.3", flags) == ["--conf-thres", "--config"]
    assert nearest_flags("--img-szie", flags) == ["--img-size"]  # no prefix match: a spelling
    assert nearest_flags("--zzz", flags) == []
    assert nearest_flags("--", ["--a", "--b", "--c", "--d"]) == ["--a", "--b", "--c"]  # at most 3
    # positional leftovers and flags with no near name keep argparse's plain line
    assert unrecognized(["extra", "--zzz"], flags) == "unrecognized arguments: extra --zzz"
    assert unrecognized(["--img-szie", "3"], flags) == \
        "unrecognized arguments: --img-szie 3 (--img-szie: did you mean --img-size?)"
