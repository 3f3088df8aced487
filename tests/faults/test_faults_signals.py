"""Signals: SIGTERM and SIGHUP stop a training as Ctrl-C does. The process gets the signal from
itself at a chosen moment (the start of epoch 1, or while epoch 0's files are being written),
exits with 128 + the signal's number and one line, leaves last.pt whole (never a temp), and
`--resume` then gives bitwise the model of the uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

from faultkit import REPO, TINY, TRAIN, one_error_line, python_exe, run, temps

# the script as a user runs it, with the signal sent from inside at a moment fixed in advance
WRAPPER = r"""
import os, runpy, sys
sig, moment = int(sys.argv.pop(1)), sys.argv.pop(1)
from yolo_slim.core import errors
if moment == "epoch1":  # as the second epoch starts
    from yolo_slim.data import dataset
    set_epoch = dataset.YoloDataset.set_epoch
    def hit(self, e):
        if e == 1 and self.augment:
            os.kill(os.getpid(), sig)
        set_epoch(self, e)
    dataset.YoloDataset.set_epoch = hit
else:  # while epoch 0's files are written: just before last.pt
    write = errors.atomic_write_bytes
    def hit(path, data):
        if os.path.basename(path) == "last.pt":
            os.kill(os.getpid(), sig)
        write(path, data)
    errors.atomic_write_bytes = hit  # before any module binds the name
sys.argv[0] = "train_sparse.py"
runpy.run_path("train_sparse.py", run_name="__main__")
"""
EPOCHS = ("--epochs", "3")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes_data):
    """The uninterrupted 3-epoch run (in-process)."""
    d = tmp_path_factory.mktemp("ref")
    (d / "tiny.cfg").write_text(TINY)
    from faultkit import main_of
    assert main_of("train_sparse")(["--cfg", str(d / "tiny.cfg"), "--data", shapes_data, *EPOCHS,
                                    "--output-dir", str(d / "run"), *TRAIN]) == 0
    return d


def same_run(a: str, b: str) -> None:
    from yolo_slim.nn.weights import read_checkpoint
    for name in ("last.pt", "best.pt"):
        x, y = read_checkpoint(os.path.join(a, name)), read_checkpoint(os.path.join(b, name))
        assert x["epoch"] == y["epoch"], name
        for key in ("model", "train_model") if name == "last.pt" else ("model",):
            for k, v in x[key].items():
                assert torch.equal(v, y[key][k]), (name, key, k)
        if name == "last.pt":
            def rows(ck):
                return [{k: v for k, v in r.items() if k != "time_s"} for r in ck["results"]]
            assert rows(x) == rows(y)
            ox, oy = x["optimizer"]["state"], y["optimizer"]["state"]
            assert all(torch.equal(ox[k]["momentum_buffer"], oy[k]["momentum_buffer"]) for k in ox)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("sig, moment", [("SIGTERM", "epoch1"), ("SIGHUP", "epoch1"),
                                         ("SIGINT", "epoch1"), ("SIGTERM", "save")])
def test_signal_stops_cleanly_and_resume_is_exact(sig, moment, reference, tmp_path, shapes_data,
                                                  capsys):
    from yolo_slim.nn.weights import read_checkpoint
    (tmp_path / "tiny.cfg").write_text(TINY)
    out = tmp_path / "run"
    num = int(getattr(signal, sig))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.run([python_exe(), "-c", WRAPPER, str(num), moment, "--cfg",
                        str(tmp_path / "tiny.cfg"), "--data", shapes_data, *EPOCHS,
                        "--output-dir", str(out), *TRAIN], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 128 + num, p.stderr
    one_error_line(p.stderr.replace("interrupted", "error: interrupted"), rf"interrupted by {sig}")
    assert not temps(tmp_path)
    ck = read_checkpoint(str(out / "last.pt"))  # whole, and the last finished epoch
    assert ck["epoch"] == 0 and read_checkpoint(str(out / "best.pt"))["epoch"] == 0
    assert len((out / "results.csv").read_text().splitlines()) == 2
    assert not (out / ".run.lock").exists()
    rc, _, err = run("train_sparse", capsys, "--resume", str(out / "last.pt"), "--device", "cpu",
                     "--workers", "0", "--no-progress")
    assert rc == 0, err
    same_run(str(reference / "run"), str(out))


def test_ignored_hangup_stays_ignored():
    """Under nohup SIGHUP is ignored: the training's handlers keep it so."""
    from yolo_slim.core.process import stop_on_signals
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, old)
