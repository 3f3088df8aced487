"""Disk and filesystem faults: a disk that fills up while weights, checkpoints, ONNX or reports
are written (ENOSPC injected into the writer, and a real kernel EFBIG under a file-size limit);
an output folder that is read-only, a regular file, or not there yet; two runs on one folder."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from faultkit import REPO, TRAIN, one_error_line, python_exe, run, temps

BIG_PID = 4194304 + 4321  # above Linux's largest pid_max: never a live process

# (id, script, argv, the file that meets the full disk, how many of its writes succeed first)
FULL = [
    ("export-weights", "export", "--cfg {cfg} --weights {weights} --format weights --output {out}/o.weights",
     "o.weights", 0),
    ("export-pt", "export", "--weights {pt} --format pt --output {out}/o.pt", "o.pt", 0),
    ("export-onnx", "export", "--weights {pt} --format onnx --img-size 64 --output {out}/o.onnx",
     "o.onnx", 0),
    ("prune-weights", "prune_channels", "--weights {pt} --output-dir {out} --global-percent 0.3",
     "tiny.weights", 0),
    ("prune-report", "prune_channels", "--weights {pt} --output-dir {out} --global-percent 0.3",
     "prune_report.json", 0),
    ("evaluate-metrics", "evaluate", "--weights {pt} --data {data} --img-size 64 --workers 0 "
     "--output-dir {out}", "metrics.json", 0),
    ("train-last", "train_sparse", "--cfg {cfg} --data {data} --epochs 2 --output-dir {out}",
     "last.pt", 1),
    ("train-best", "train_sparse", "--cfg {cfg} --data {data} --epochs 2 --output-dir {out}",
     "best.pt", 1),
    ("train-csv", "train_sparse", "--cfg {cfg} --data {data} --epochs 2 --output-dir {out}",
     "results.csv", 1),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case, script, argv, target, skip", FULL, ids=[c[0] for c in FULL])
def test_full_disk_names_the_file_and_keeps_the_old_one(case, script, argv, target, skip, tiny,
                                                        disk_full, capsys):
    out = os.path.join(tiny["d"], "out")
    os.makedirs(out)
    old = os.path.join(out, target)
    if not skip:  # what an earlier run left under the final name
        with open(old, "wb") as f:
            f.write(b"the previous run's file")
    disk = disk_full(target, room=100, skip=skip)
    args = argv.format(out=out, **tiny).split() + (list(TRAIN) if script == "train_sparse" else [])
    rc, _, err = run(script, capsys, *args)
    assert disk.hits > skip, f"{target} was never written"
    assert rc == 2
    one_error_line(err, rf"{out}/{target}\b.*No space left on device")
    assert not temps(tiny["d"])
    if skip:  # the first epoch's file is there, whole
        if target.endswith(".pt"):
            from yolo_slim.nn.weights import read_checkpoint
            assert read_checkpoint(old)["epoch"] == 0
        else:
            assert len(open(old).read().splitlines()) == 2  # header + epoch 0
    else:
        assert open(old, "rb").read() == b"the previous run's file"


def test_atomic_writer_on_a_full_disk(tmp_path, disk_full, capsys):
    from yolo_slim.core.errors import atomic_write_bytes, cli_main
    f = tmp_path / "a.weights"
    f.write_bytes(b"old")
    disk_full("a.weights", room=4)
    rc = cli_main(lambda argv: atomic_write_bytes(str(f), b"new and longer"))([])
    assert rc == 2
    one_error_line(capsys.readouterr().err, rf"{f}: No space left on device")
    assert f.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.weights"]


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # bytes; Python ignores SIGXFSZ


def test_a_real_file_size_limit(tiny):
    """The kernel's own error (EFBIG under ulimit -f), not an injected one."""
    out = os.path.join(tiny["d"], "o.weights")
    with open(out, "wb") as f:
        f.write(b"old")
    assert os.path.getsize(tiny["weights"]) > 8192
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([python_exe(), str(REPO / "export.py"), "--cfg", tiny["cfg"], "--weights",
                        tiny["weights"], "--format", "weights", "--output", out],
                       env=env, capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_file_size)
    assert p.returncode == 2, p.stderr
    one_error_line(p.stderr, rf"{out}: File too large")
    assert open(out, "rb").read() == b"old" and not temps(tiny["d"])


# ---- the output folder --------------------------------------------------------------------

# every script, its outputs under {o}: a regular file, or a read-only folder
OUT_CASES = [
    ("train_sparse", "--cfg {cfg} --data {data} --epochs 1 --output-dir {o}/run"),
    ("distill", "--weights {pt} --data {data} --kd none --epochs 1 --output-dir {o}/run"),
    ("prune_channels", "--weights {pt} --output-dir {o}/p --global-percent 0.3"),
    ("prune_layers", "--weights {pt} --output-dir {o}/p --shortcuts 1"),
    ("evaluate", "--weights {pt} --data {data} --img-size 64 --output-dir {o}/e"),
    ("detect", "--weights {pt} --source {images} --img-size 64 --output-dir {o}/d"),
    ("export", "--weights {pt} --format pt --output {o}/x.pt"),
]


def run_case(script: str, argv: str, o: str, tiny, capsys) -> tuple[int, str, str]:
    return run(script, capsys, *argv.format(o=o, **tiny).split(),
               *(TRAIN if script in ("train_sparse", "distill") else ()))


@pytest.mark.parametrize("script, argv", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_output_dir_that_is_a_file(script, argv, tiny, capsys):
    f = os.path.join(tiny["d"], "afile")
    with open(f, "w") as fh:
        fh.write("keep me")
    rc, _, err = run_case(script, argv, f, tiny, capsys)
    assert rc == 2
    one_error_line(err, rf"{f}\b.*(is a file|not a directory)")
    assert open(f).read() == "keep me"


@pytest.mark.parametrize("script, argv", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_read_only_output_dir_is_refused_before_any_work(script, argv, tiny, capsys):
    ro = os.path.join(tiny["d"], "ro")
    os.makedirs(ro)
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes here")
        rc, out, err = run_case(script, argv, ro, tiny, capsys)
    finally:
        os.chmod(ro, 0o755)
    assert rc == 2
    one_error_line(err, rf"{ro}\b.*not writable")
    assert "train.txt" not in out and os.listdir(ro) == []


def test_read_only_check_itself(tmp_path, monkeypatch):
    """What the refusal above checks, where chmod cannot make a folder read-only (root)."""
    from yolo_slim.core.errors import YoloSlimError
    from yolo_slim.core.paths import guard_outputs
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p) == str(ro) and m & os.W_OK
                        else real(p, m, **k))
    with pytest.raises(YoloSlimError, match=rf"--output-dir: {ro} is not writable"):
        guard_outputs({}, {"--output-dir": [str(ro / "new" / "last.pt")]})
    guard_outputs({}, {"--output-dir": [str(tmp_path / "ok" / "last.pt")]})


@pytest.mark.filterwarnings("ignore")
def test_missing_parents_are_created_for_output_dirs_not_for_output_files(tiny, capsys):
    deep = os.path.join(tiny["d"], "a", "b", "c")
    rc, _, err = run("prune_channels", capsys, "--weights", tiny["pt"], "--output-dir", deep,
                     "--global-percent", "0.3")
    assert rc == 0, err
    assert os.path.isfile(os.path.join(deep, "tiny.weights"))
    rc, _, err = run("train_sparse", capsys, "--cfg", tiny["cfg"], "--data", tiny["data"],
                     "--epochs", "1", "--output-dir", os.path.join(tiny["d"], "x", "y"), *TRAIN)
    assert rc == 0, err
    assert os.path.isfile(os.path.join(tiny["d"], "x", "y", "last.pt"))
    rc, _, err = run("export", capsys, "--weights", tiny["pt"], "--format", "pt", "--output",
                     os.path.join(tiny["d"], "nope", "o.pt"))
    assert rc == 2
    one_error_line(err, r"nope.*does not exist")


# ---- two runs on one output folder ----------------------------------------------------------

def test_a_second_run_on_a_busy_output_dir_is_refused(tiny, capsys):
    out = os.path.join(tiny["d"], "run")
    os.makedirs(out)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(os.path.join(out, ".run.lock"), "w") as f:
            f.write(f"{other.pid}\n")
        rc, _, err = run("train_sparse", capsys, "--cfg", tiny["cfg"], "--data", tiny["data"],
                         "--epochs", "1", "--output-dir", out, *TRAIN)
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert rc == 2
    one_error_line(err, rf"{out}\b.*in use by .*pid {other.pid}")
    assert sorted(os.listdir(out)) == [".run.lock"]


def test_two_runs_in_one_process_and_a_stale_lock(tiny, capsys):
    from yolo_slim.core.errors import YoloSlimError
    from yolo_slim.core.process import run_lock
    out = os.path.join(tiny["d"], "run")
    argv = ("--cfg", tiny["cfg"], "--data", tiny["data"], "--epochs", "1", "--output-dir", out, *TRAIN)
    with run_lock(out):
        rc, _, err = run("train_sparse", capsys, *argv)
        assert rc == 2
        one_error_line(err, rf"in use by .*pid {os.getpid()}")
        with pytest.raises(YoloSlimError, match="in use"):
            with run_lock(out):
                pass
    with open(os.path.join(out, ".run.lock"), "w") as f:  # what a killed run left
        f.write(f"{BIG_PID}\n")
    rc, _, err = run("train_sparse", capsys, *argv)
    assert rc == 0, err
    assert not os.path.exists(os.path.join(out, ".run.lock"))  # released at the end
