"""Files from elsewhere: truncated or garbled checkpoints, another tool's pickles (refused
without running any of their code), .weights longer than the cfg needs, label lines with more
than five columns, cfgs written on Windows or by hand (CRLF, tabs, inline comments)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from faultkit import TINY, one_error_line, run


class Boom:
    """A pickle whose loading would run a command: what a malicious checkpoint looks like."""

    def __init__(self, flag: str):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def foreign(kind: str, d: str, pt: str) -> tuple[str, str]:
    """(file, the pattern of its one-line error)."""
    path = os.path.join(d, f"{kind}.pt")
    good = open(pt, "rb").read()
    if kind == "truncated":
        data = good[:len(good) // 2]
    elif kind == "garbled":
        data = bytearray(good)
        data[len(data) // 3:len(data) // 3 + 256] = os.urandom(256)
        data = bytes(data)
    elif kind == "empty":
        data = b""
    if kind in ("truncated", "garbled", "empty"):
        with open(path, "wb") as f:
            f.write(data)
        return path, r"not a readable checkpoint"
    if kind == "pickled-model":  # torch.save(model): the whole module pickled (other tools)
        torch.save({"model": torch.nn.Conv2d(3, 8, 3)}, path)
    elif kind == "evil-zip":
        torch.save({"model": Boom(os.path.join(d, "pwned"))}, path)
    elif kind == "evil-pickle":  # a legacy (non-zip) pickle
        with open(path, "wb") as f:
            pickle.dump({"model": Boom(os.path.join(d, "pwned"))}, f)
    elif kind == "state-dict":  # another tool's weights-only state dict
        torch.save({"model": {"backbone.conv1.weight": torch.zeros(8, 3, 3, 3)}}, path)
        return path, r"checkpoint has no cfg|does not match the cfg"
    elif kind == "bare-tensors":
        torch.save({"conv.weight": torch.zeros(2)}, path)
        return path, r"not a yolo-slim checkpoint"
    return path, r"not a readable checkpoint.*(refused|weights_only|not allowed|code)"


@pytest.mark.parametrize("kind", ["truncated", "garbled", "empty", "pickled-model", "evil-zip",
                                  "evil-pickle", "state-dict", "bare-tensors"])
def test_foreign_checkpoints_are_refused_without_running_them(kind, tiny, capsys):
    path, pattern = foreign(kind, tiny["d"], tiny["pt"])
    rc, _, err = run("export", capsys, "--weights", path, "--format", "weights", "--output",
                     os.path.join(tiny["d"], "o.weights"))
    assert rc == 2
    one_error_line(err, pattern)
    assert not os.path.exists(os.path.join(tiny["d"], "pwned"))
    assert not os.path.exists(os.path.join(tiny["d"], "o.weights"))


@pytest.mark.parametrize("extra, pattern", [
    (8, r"holds (\d+) floats but the cfg needs \d+ \(2 floats too many\).*--transfer"),
    (3, r"holds [\d.]+ floats \(not a whole number\).*\+0\.75 floats"),
    (-4, r"\(1 floats too few\)")])
def test_weights_longer_or_shorter_than_the_cfg_say_by_how_much(extra, pattern, tiny, capsys):
    """DESIGN.md's contract: a size mismatch is an error that says by how much (darknet reads
    the prefix silently; reading a prefix is --transfer's job)."""
    data = open(tiny["weights"], "rb").read()
    path = os.path.join(tiny["d"], "odd.weights")
    with open(path, "wb") as f:
        f.write(data + b"\0" * extra if extra > 0 else data[:extra])
    rc, _, err = run("export", capsys, "--cfg", tiny["cfg"], "--weights", path, "--format", "pt",
                     "--output", os.path.join(tiny["d"], "o.pt"))
    assert rc == 2
    one_error_line(err, pattern)


def test_label_lines_with_extra_columns_are_counted(tmp_path):
    """Darknet reads five numbers a box; a sixth column (a score, say) is not silently dropped:
    the first five are used and the lines counted in the summary."""
    import cv2
    from yolo_slim.data.dataset import YoloDataset
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2 0.97\n1 0.3 0.3 0.1 0.1\n"
                                               "2 0.6 0.6 0.2 0.2 0.5 0.5 0.7\n")
    (tmp_path / "list.txt").write_text("images/a.png\n")
    ds = YoloDataset(str(tmp_path / "list.txt"), 32, nc=3)
    np.testing.assert_allclose(ds.labels[0], [[0, .5, .5, .2, .2], [1, .3, .3, .1, .1],
                                              [2, .6, .6, .2, .2]], atol=1e-6)
    assert ds.stats["extra_columns"] == 2
    assert "2 label lines with more than 5 columns (first 5 used)" in ds.summary
    assert "a.txt:1" in ds.summary


def test_cfg_from_windows_and_by_hand(tmp_path):
    """CRLF endings, tabs, spaces and comments after a number read as darknet reads them (its
    strip() drops all whitespace, atoi stops at '#'): the same network as the clean cfg."""
    from yolo_slim.core.errors import CfgError
    from yolo_slim.darknet.cfg import parse_cfg
    from yolo_slim.nn.model import Darknet
    messy = TINY.replace("filters=16\n", "filters = 16\t# wider later\n", 1)
    messy = messy.replace("size=3\n", "size\t=\t3\t# three\n").replace("\n", "\r\n")
    (tmp_path / "messy.cfg").write_bytes(messy.encode())
    (tmp_path / "clean.cfg").write_text(TINY)
    a, b = Darknet(parse_cfg(str(tmp_path / "messy.cfg"))), Darknet(parse_cfg(str(tmp_path / "clean.cfg")))
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]
    a.load_state_dict(b.state_dict())
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(a.eval()(x), b.eval()(x))
    # a comment after a word is part of the word for darknet: an error naming the line here
    (tmp_path / "act.cfg").write_bytes(TINY.replace("activation=leaky\n", "activation=leaky # x\n", 1)
                                       .encode())
    with pytest.raises(CfgError, match=r"act\.cfg:\d+: .*activation 'leaky#x' is not supported"):
        Darknet(parse_cfg(str(tmp_path / "act.cfg")))
