"""Bad input to export.py: exit status 2, one line on stderr starting with 'error:', never a
traceback. A few cases run as real subprocesses, the rest call the script's main in-process
(same cli_main wrapper, without paying a torch import per case)."""
from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

GOOD = """[net]
width=32
height=32
[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky
[convolutional]
filters=6
size=1
activation=linear
[yolo]
mask=0
anchors=4,4
classes=1
"""
GOOD_FLOATS = (4 * 4 + 4 * 3 * 9) + (6 + 6 * 4)


def weights_file(path, n_floats: int) -> str:
    hdr = np.array([0, 2, 5], "<i4").tobytes() + np.array([0], "<i8").tobytes()
    path.write_bytes(hdr + np.zeros(n_floats, "<f4").tobytes())
    return str(path)


def assert_one_line_error(rc: int, err: str, pattern: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def files(tmp_path):
    cfg = tmp_path / "good.cfg"
    cfg.write_text(GOOD)
    return {"cfg": str(cfg), "weights": weights_file(tmp_path / "good.weights", GOOD_FLOATS),
            "dir": tmp_path}


# ---- real subprocesses: what a user sees --------------------------------------------------

def test_subprocess_missing_cfg(files, run_script):
    rc, out, err = run_script("export.py", "--cfg", files["dir"] / "nope.cfg", "--weights",
                              files["weights"], "--format", "pt")
    assert_one_line_error(rc, err, r"cfg not found: .*nope\.cfg$")
    assert out == ""


def test_subprocess_missing_weights(files, run_script):
    rc, _, err = run_script("export.py", "--cfg", files["cfg"], "--weights",
                            files["dir"] / "nope.weights", "--format", "pt")
    assert_one_line_error(rc, err, r"weights not found: .*nope\.weights$")


def test_subprocess_wrong_size_weights(files, run_script):
    short = weights_file(files["dir"] / "short.weights", GOOD_FLOATS - 5)
    rc, _, err = run_script("export.py", "--cfg", files["cfg"], "--weights", short,
                            "--format", "weights", "--output", files["dir"] / "o.weights")
    assert_one_line_error(rc, err, rf"holds {GOOD_FLOATS - 5} floats but the cfg needs "
                                   rf"{GOOD_FLOATS} \(5 floats too few\)")
    assert not (files["dir"] / "o.weights").exists()


def test_subprocess_malformed_cfg(files, run_script):
    bad = files["dir"] / "bad.cfg"
    bad.write_text(GOOD.replace("[yolo]", "[yolo] # head"))
    rc, _, err = run_script("export.py", "--cfg", bad, "--weights", files["weights"],
                            "--format", "pt")
    assert_one_line_error(rc, err, rf"^error: {re.escape(str(bad))}:14: unknown section")


# ---- in-process: every other malformed input -------------------------------------------

@pytest.fixture(scope="module")
def export_main(repo_root):
    spec = importlib.util.spec_from_file_location("export_script", repo_root / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.parametrize("old, new, line, pattern", [
    ("filters=4\n", "filters=four\n", 6, r"\[convolutional\] filters='four' is not an integer"),
    ("size=3\n", "size 3\n", 7, r"line has no '='"),
    ("size=3\n", "size=\n", 7, r"key 'size' has no value"),
    ("[yolo]\n", "[route]\nlayers=-9\n[yolo]\n", 14, r"layers=-9 points to layer -7, outside"),
    ("[yolo]\n", "[shortcut]\nfrom=5\n[yolo]\n", 14, r"from=5 points to layer 5, outside"),
    ("[yolo]\n", "[reorg]\nstride=2\n[yolo]\n", 14, r"layer type \[reorg\] is not supported"),
    ("activation=leaky", "activation=elu", 4, r"activation 'elu' is not supported"),
    ("[net]\n", "width=3\n[net]\n", 1, r"before any \[section\]"),
])
def test_malformed_cfg_one_line_with_file_and_line(files, export_main, capsys, old, new, line,
                                                   pattern):
    bad = files["dir"] / "bad.cfg"
    bad.write_text(GOOD.replace(old, new, 1))
    rc = export_main(["--cfg", str(bad), "--weights", files["weights"], "--format", "pt",
                      "--output", str(files["dir"] / "o.pt")])
    msg = assert_one_line_error(rc, capsys.readouterr().err, pattern)
    assert msg.startswith(f"error: {bad}:{line}: "), msg
    assert not (files["dir"] / "o.pt").exists()


def test_other_bad_inputs(files, export_main, capsys):
    d = files["dir"]
    cases = [
        (["--weights", files["weights"], "--format", "pt"], r"--cfg is required"),
        (["--cfg", files["cfg"], "--weights", files["weights"], "--format", "weights",
          "--output", files["weights"]], r"would overwrite the input --weights"),
        (["--cfg", files["cfg"], "--weights", files["weights"], "--format", "pt",
          "--output", str(d / "no" / "such" / "dir.pt")], r"directory does not exist"),
        (["--cfg", files["cfg"], "--weights", str(d / "missing.pt"), "--format", "weights"],
         r"checkpoint not found"),
    ]
    (d / "junk.pt").write_bytes(b"garbage")
    cases.append((["--weights", str(d / "junk.pt"), "--format", "weights"],
                  r"not a readable checkpoint"))
    (d / "empty.cfg").write_text("# nothing\n")
    cases.append((["--cfg", str(d / "empty.cfg"), "--weights", files["weights"], "--format",
                   "pt"], r"no sections found"))
    for argv, pattern in cases:
        rc = export_main(argv)
        assert_one_line_error(rc, capsys.readouterr().err, pattern)


def test_good_input_still_works(files, export_main, capsys):
    out = files["dir"] / "ok.pt"
    assert export_main(["--cfg", files["cfg"], "--weights", files["weights"], "--format", "pt",
                        "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.is_file()
