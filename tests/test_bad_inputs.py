"""The README's promise, as a table: for every script, bad or unusual input gives exit status 2
and one `error: ...` line (no traceback), or runs with the one warning darknet would print, and
never changes an input file (SHA-256 of every input before == after).

Each row: (script, argv with {placeholders} for the input files, expected outcome, pattern).
The inputs are made fresh per row in tmp_path: a tiny cfg (`good.cfg`, 32 px, 2 convs, 1 YOLO
head), its `good.weights`, a self-describing `best.pt`/`last.pt`, a 1-class `.data` with two
32 px images, and the variants a row needs (NaN weights, BOM files, ...). Every row runs the
script's main() in-process (the same cli_main wrapper a user gets).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from test_cli_errors import GOOD, GOOD_FLOATS

SCRIPTS = ("train_sparse", "prune_channels", "prune_layers", "distill", "export", "evaluate",
           "detect")
TOOLS = {"unstructured": "yolo_slim.tools.unstructured", "sensitivity": "yolo_slim.tools.sensitivity"}
BIG_PID = 4194304 + 4321  # above Linux's largest pid_max: never a live process


def weights_bytes(values: np.ndarray) -> bytes:
    return np.array([0, 2, 5], "<i4").tobytes() + np.array([0], "<i8").tobytes() + \
        values.astype("<f4").tobytes()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mains(repo_root):
    out = {}
    for name in SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"{name}_script", repo_root / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out[name] = mod.main
    for name, module in TOOLS.items():
        out[name] = importlib.import_module(module).main
    return out


def make_inputs(d: Path) -> dict[str, str]:
    """The input files every row may use; returns the placeholders."""
    import cv2
    import torch
    from yolo_slim.darknet.cfg import parse_cfg_text
    from yolo_slim.nn.weights import save_checkpoint
    from yolo_slim.nn.model import Darknet
    from yolo_slim.train.engine import TrainConfig
    (d / "good.cfg").write_text(GOOD)
    rng = np.random.default_rng(0)
    vals = rng.normal(0, 0.1, GOOD_FLOATS).astype(np.float32)
    vals[12:16] = np.abs(vals[12:16]) + 0.5  # BN running_var > 0 (beta, gamma, mean, var of 4)
    (d / "good.weights").write_bytes(weights_bytes(vals))
    model = Darknet(parse_cfg_text(GOOD, "good.cfg", warn=False))
    torch.manual_seed(0)
    save_checkpoint(model, str(d / "best.pt"))
    run = d / "run"
    run.mkdir()
    opt = dataclasses.asdict(TrainConfig(data=str(d / "one.data"), output_dir=str(run), epochs=3))
    save_checkpoint(model, str(run / "last.pt"), opt=opt)  # what --resume reads first
    save_checkpoint(model, str(d / "last.pt"))
    bad = vals.copy()
    bad[GOOD_FLOATS - 40] = np.nan  # inside the first conv's kernel
    (d / "nan.weights").write_bytes(weights_bytes(bad))
    bad = vals.copy()
    bad[-3] = np.inf  # the second conv's kernel
    (d / "inf.weights").write_bytes(weights_bytes(bad))
    (d / "huge.weights").write_bytes(weights_bytes(np.full(GOOD_FLOATS, 3e38, np.float32)))
    (d / "images").mkdir()
    (d / "labels").mkdir()
    for i, name in enumerate(("a", "b")):
        img = np.full((32, 32, 3), 40 + 100 * i, np.uint8)
        cv2.rectangle(img, (8, 8), (20, 24), (255, 255, 255), -1)
        cv2.imwrite(str(d / "images" / f"{name}.jpg"), img)
        (d / "labels" / f"{name}.txt").write_text("0 0.45 0.5 0.4 0.5\n")
    (d / "train.txt").write_text("images/a.jpg\nimages/b.jpg\n")
    (d / "one.names").write_text("thing\n")
    (d / "one.data").write_text("classes=1\ntrain=train.txt\nvalid=train.txt\nnames=one.names\n")
    bom = "\ufeff".encode()
    (d / "bom_list.txt").write_bytes(bom + b"images/a.jpg\nimages/b.jpg\n")
    (d / "bom.names").write_bytes(bom + b"thing\n")
    (d / "bom.data").write_bytes(bom + b"classes=1\ntrain=bom_list.txt\nvalid=bom_list.txt\n"
                                       b"names=bom.names\n")
    (d / "bom_ratios.json").write_bytes(bom + json.dumps({"layers": {"0": 0.5}}).encode())
    return {k: str(v) for k, v in {
        "d": d, "cfg": d / "good.cfg", "w": d / "good.weights", "pt": d / "best.pt",
        "last": d / "last.pt", "run": run, "data": d / "one.data", "images": d / "images",
        "out": d / "out"}.items()}


def bad_cfg(d: Path, old: str, new: str, name: str = "bad.cfg") -> str:
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    (d / name).write_text(text)
    return str(d / name)


# cfg texts that parse but cannot run: the shape pass (the section registry) must refuse them
# with the file and the line of the section (or key) that is wrong
SHAPE_CASES = {
    "shortcut-size": ("[yolo]\n", "[maxpool]\nsize=2\nstride=2\n[shortcut]\nfrom=-2\n"
                      "activation=linear\n[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
                      "[yolo]\n", {17, 18}),
    "route-size": ("[yolo]\n", "[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-1,-2\n"
                   "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n[yolo]\n", {17, 18}),
    "stride0": ("size=3\n", "size=3\nstride=0\n", {4, 8}),
    "size0": ("size=3\n", "size=0\n", {4, 7}),
    "channels0": ("[net]\n", "[net]\nchannels=0\n", {1, 2}),
}

OUT = "{out}"
# (id, script, argv, outcome, pattern); outcome: "error" (exit 2, one line), "warn" (exit 0,
# stderr = warning lines matching pattern), "ok" (exit 0, no warning). {x} = make_inputs' paths.
ROWS = [
    # ---- data loss: no output may be an input (core/paths.guard_outputs) -------------------
    ("loss-prune-pt", "prune_channels", "--weights {pt} --output-dir {d} --global-percent 0.3",
     "error", r"would overwrite the input --weights .*best\.pt"),
    ("loss-prune-cfg", "prune_channels", "--cfg {cfg} --weights {w} --output-dir {d} --threshold 0.01",
     "error", r"would overwrite the input --cfg .*good\.cfg"),
    ("loss-prune-symlink", "prune_channels", "--weights {pt} --output-dir {d}/link --global-percent 0.3",
     "error", r"would overwrite the input --weights .*best\.pt"),
    ("loss-prune-layers-pt", "prune_layers", "--weights {pt} --output-dir {d} --shortcuts 1",
     "error", r"would overwrite the input --weights .*best\.pt"),
    ("loss-distill-student", "distill", "--cfg {cfg} --weights {w} --data {data} --kd none "
     "--output-dir {d}", "error", r"would overwrite the input --cfg .*good\.cfg"),
    ("loss-distill-teacher", "distill", "--weights {w} --cfg {cfg} --data {data} --kd hinton "
     "--t-weights {run}/best.pt --output-dir {run}", "error", r"input --t-weights"),
    ("loss-train-last", "train_sparse", "--data {data} --weights {last} --output-dir {d}",
     "error", r"would overwrite the input --weights .*last\.pt"),
    ("loss-train-cfg-named-opt", "train_sparse", "--cfg {d}/cfgs/opt.json --data {data} "
     "--output-dir {d}/cfgs", "error", r"input --cfg .*opt\.json"),
    ("loss-export-cfg", "export", "--cfg {cfg} --weights {w} --format weights --output {cfg}",
     "error", r"--output: .*good\.cfg would overwrite the input --cfg"),
    ("loss-export-hardlink", "export", "--cfg {cfg} --weights {w} --format weights "
     "--output {d}/hard.weights", "error", r"would overwrite the input --weights"),
    ("loss-detect-source", "detect", "--weights {pt} --source {images} --output-dir {images} "
     "--img-size 32", "error", r"would overwrite the input --source .*a\.jpg"),
    ("loss-evaluate-data", "evaluate", "--weights {pt} --data {d}/ev/metrics.json --output-dir {d}/ev "
     "--img-size 32", "error", r"input --data .*metrics\.json"),
    ("loss-unstructured", "unstructured", "--cfg {cfg} --weights {w} --output-dir {d} --amount 0.5",
     "error", r"would overwrite the input .*good\.cfg"),
    ("loss-sensitivity", "sensitivity", "--weights {pt} --data {d}/sens/ratios.json "
     "--output-dir {d}/sens", "error", r"input --data .*ratios\.json"),
    # ---- flags checked when parsed, in one place (core/cli.number) --------------------------
    # --img-size is the cfg's rule (a multiple of its largest stride, 1 here), not the flag's
    ("flag-prune-img-fit", "prune_channels", "--weights {pt} --output-dir {out} --global-percent 0.3 "
     "--img-size 100", "ok", r"wrote"),
    ("flag-prune-batch0", "prune_channels", "--weights {pt} --output-dir {out} --global-percent 0.3 "
     "--batch-size 0", "error", r"argument --batch-size: must be >= 1, got 0"),
    ("flag-prune-percent", "prune_channels", "--weights {pt} --output-dir {out} --global-percent 1.5",
     "error", r"argument --global-percent: must be >= 0 and <= 1"),
    ("flag-prune-missing", "prune_channels", "--weights {pt} --output-dir {out}",
     "error", r"one of the arguments --global-percent .* is required"),
    ("flag-layers-img0", "prune_layers", "--weights {pt} --output-dir {out} --shortcuts 1 "
     "--img-size 0", "error", r"argument --img-size: must be >= 1"),
    ("flag-layers-shortcuts0", "prune_layers", "--weights {pt} --output-dir {out} --shortcuts 0",
     "error", r"argument --shortcuts: must be >= 1, got 0"),
    ("flag-train-batch0", "train_sparse", "--cfg {cfg} --data {data} --output-dir {out} "
     "--batch-size 0", "error", r"argument --batch-size: must be >= 1, got 0"),
    ("flag-train-lr-nan", "train_sparse", "--cfg {cfg} --data {data} --output-dir {out} --lr0 nan",
     "error", r"argument --lr0: must be a finite number"),
    ("flag-train-img-neg", "train_sparse", "--cfg {cfg} --data {data} --output-dir {out} "
     "--img-size -32", "error", r"argument --img-size: must be >= 0, got -32"),
    # flags are taken only as spelled: --epoch is not --epochs, --lr names the flags it starts
    ("flag-train-unknown", "train_sparse", "--cfg {cfg} --data {data} --epoch 3 --lr 0.1",
     "error", r"unrecognized arguments: --epoch 3 --lr 0.1 \(--epoch: did you mean --epochs\?; "
              r"--lr: did you mean --lr-schedule, --lr-steps or --lr0\?\)$"),
    ("flag-distill-batch0", "distill", "--weights {pt} --data {data} --kd none --output-dir {out} "
     "--batch-size 0", "error", r"argument --batch-size: must be >= 1"),
    ("flag-distill-temp0", "distill", "--weights {pt} --data {data} --output-dir {out} "
     "--temperature 0", "error", r"argument --temperature: must be > 0"),
    ("flag-export-img0", "export", "--weights {pt} --format onnx --img-size 0 --output {d}/m.onnx",
     "error", r"argument --img-size: must be >= 1"),
    ("flag-export-batch0", "export", "--weights {pt} --format onnx --batch-size 0 "
     "--output {d}/m.onnx", "error", r"argument --batch-size: must be >= 1"),
    ("flag-export-img3", "export", "--weights {pt} --format onnx --img-size 32 32 32 "
     "--output {d}/m.onnx", "error", r"--img-size takes S or H W"),
    ("flag-evaluate-img0", "evaluate", "--weights {pt} --data {data} --output-dir {out} --img-size 0",
     "error", r"argument --img-size: must be >= 1"),
    ("flag-evaluate-batch0", "evaluate", "--weights {pt} --data {data} --output-dir {out} "
     "--batch-size 0", "error", r"argument --batch-size: must be >= 1"),
    ("flag-detect-img0", "detect", "--weights {pt} --source {images} --output-dir {out} --img-size 0",
     "error", r"argument --img-size: must be >= 1"),
    ("flag-detect-conf", "detect", "--weights {pt} --source {images} --output-dir {out} "
     "--conf-thres 2", "error", r"argument --conf-thres: must be >= 0 and <= 1, got 2"),
    ("flag-unstructured-amount", "unstructured", "--weights {pt} --output-dir {out} --amount 2",
     "error", r"argument --amount: must be >= 0 and <= 1"),
    ("flag-sensitivity-ratio", "sensitivity", "--weights {pt} --data {data} --output-dir {out} "
     "--ratios 0.5 -1", "error", r"argument --ratios: must be >= 0"),
    # ---- silence where darknet speaks: --epochs 0, --resume changing the run ------------------
    ("silent-train-epochs0", "train_sparse", "--cfg {cfg} --data {data} --output-dir {out} "
     "--epochs 0", "error", r"argument --epochs: must be >= 1, got 0"),
    ("silent-distill-epochs0", "distill", "--weights {pt} --data {data} --kd none "
     "--output-dir {out} --epochs 0", "error", r"argument --epochs: must be >= 1, got 0"),
    ("silent-resume-epochs", "train_sparse", "--resume {run}/last.pt --epochs 10", "error",
     r"--resume keeps .*--epochs 10 \(the run has 3\)"),
    ("silent-resume-lr", "distill", "--resume {run}/last.pt --data {data} --kd none --lr0 0.5",
     "error", r"--resume keeps .*--lr0 0.5 \(the run has 0.01\)"),
    # ---- non-finite weights and outputs name the layer ----------------------------------------
    ("nan-export-onnx", "export", "--cfg {cfg} --weights {d}/nan.weights --format onnx --img-size 32 "
     "--output {d}/m.onnx", "error", r"nan\.weights: conv layer 0 \(cfg line 4\): kernel holds 1 NaN"),
    ("nan-prune", "prune_channels", "--cfg {cfg} --weights {d}/nan.weights --output-dir {out} "
     "--global-percent 0.3", "error", r"conv layer 0 .*kernel holds 1 NaN"),
    ("inf-evaluate", "evaluate", "--cfg {cfg} --weights {d}/inf.weights --data {data} "
     "--output-dir {out} --img-size 32", "error", r"conv layer 1 \(cfg line 10\): kernel holds 1 inf"),
    ("inf-detect", "detect", "--cfg {cfg} --weights {d}/inf.weights --source {images} "
     "--output-dir {out} --img-size 32", "error", r"conv layer 1 .*kernel holds 1 inf"),
    ("inf-train", "train_sparse", "--cfg {cfg} --weights {d}/inf.weights --data {data} "
     "--output-dir {out}", "error", r"conv layer 1 .*inf"),
    ("overflow-prune-verify", "prune_channels", "--cfg {cfg} --weights {d}/huge.weights "
     "--output-dir {out} --global-percent 0.3", "error", r"non-finite"),
    # ---- BOM-safe text inputs -------------------------------------------------------------------
    ("bom-evaluate", "evaluate", "--weights {pt} --data {d}/bom.data --output-dir {out} "
     "--img-size 32 --workers 0 --device cpu", "ok", r"wrote .*metrics\.json"),
    ("bom-detect", "detect", "--weights {pt} --source {d}/bom_list.txt --names {d}/bom.names "
     "--output-dir {out} --img-size 32 --device cpu", "ok", r"in 2 images"),
    ("bom-prune-ratios", "prune_channels", "--weights {pt} --output-dir {out} "
     "--layer-ratios {d}/bom_ratios.json", "ok", r"wrote"),
    # ---- cfg keys darknet ignores: one warning naming file and line ----------------------------
    ("warn-unknown-key", "export", "--cfg {d}/typo.cfg --weights {w} --format pt --output {d}/x.pt",
     "warn", r"^warning: .*typo\.cfg:10: \[convolutional\] unknown key 'strides'"),
    ("warn-dup-key", "prune_layers", "--cfg {d}/dup.cfg --list",
     "warn", r"^warning: .*dup\.cfg:8: \[convolutional\] duplicate key 'size'.*first one \(line 7\)"),
    # ---- leftovers after a kill: temps no glob sees, cleared by the next run --------------------
    ("temp-cleared", "export", "--cfg {cfg} --weights {w} --format weights --output {d}/o.weights",
     "ok", r"wrote"),
    ("temp-dir-output", "export", "--cfg {cfg} --weights {w} --format weights --output {d}/adir",
     "error", r"--output: .*adir is a directory"),
    ("temp-outdir-file", "evaluate", "--weights {pt} --data {data} --output-dir {cfg}/x",
     "error", r"error: "),
]
for _name, (_old, _new, _lines) in SHAPE_CASES.items():
    ROWS.append((f"shape-{_name}-export", "export", f"--cfg {{d}}/{_name}.cfg --weights {{d}}/zero.weights "
                 "--format pt --output {d}/s.pt", "error", _lines))
    ROWS.append((f"shape-{_name}-prune", "prune_channels", f"--cfg {{d}}/{_name}.cfg "
                 "--weights {d}/zero.weights --output-dir {out} --global-percent 0.3", "error", _lines))


def prepare(row_id: str, d: Path) -> None:
    """Extra inputs a row needs beyond make_inputs."""
    if row_id == "loss-prune-symlink":
        os.symlink(d, d / "link")
    elif row_id == "loss-export-hardlink":
        os.link(d / "good.weights", d / "hard.weights")
    elif row_id == "loss-distill-teacher":
        (d / "run" / "best.pt").write_bytes((d / "best.pt").read_bytes())
    elif row_id == "loss-train-cfg-named-opt":
        (d / "cfgs").mkdir()
        (d / "cfgs" / "opt.json").write_text(GOOD)
    elif row_id == "loss-evaluate-data":
        (d / "ev").mkdir()
        (d / "ev" / "metrics.json").write_text((d / "one.data").read_text()
                                               .replace("train.txt", "../train.txt")
                                               .replace("one.names", "../one.names"))
    elif row_id == "loss-sensitivity":
        (d / "sens").mkdir()
        (d / "sens" / "ratios.json").write_text((d / "one.data").read_text()
                                                .replace("train.txt", "../train.txt")
                                                .replace("one.names", "../one.names"))
    elif row_id == "warn-unknown-key":
        (d / "typo.cfg").write_text(GOOD.replace("activation=leaky\n", "activation=leaky\nstrides=2\n"))
    elif row_id == "warn-dup-key":
        (d / "dup.cfg").write_text(GOOD.replace("size=3\n", "size=3\nsize=5\n"))
    elif row_id == "temp-cleared":  # what kill -9 mid-write left: new-style and old-style temps
        (d / f".o.weights.{BIG_PID}.part").write_bytes(b"half")
        (d / f"o.weights.tmp{BIG_PID}").write_bytes(b"half")
    elif row_id == "temp-dir-output":
        (d / "adir").mkdir()
    elif row_id.startswith("shape-"):
        name = row_id.split("-", 1)[1].rsplit("-", 1)[0]
        old, new, _ = SHAPE_CASES[name]
        bad_cfg(d, old, new, f"{name}.cfg")
        (d / "zero.weights").write_bytes(weights_bytes(np.zeros(0, np.float32)))


def _param(row):
    marks: list = []
    if row[0] in ("bom-evaluate", "bom-detect", "bom-prune-ratios", "nan-export-onnx"):
        marks.append(pytest.mark.filterwarnings("ignore"))
    return pytest.param(*row, id=row[0], marks=marks)


@pytest.mark.parametrize("row_id, script, argv, outcome, pattern", [_param(r) for r in ROWS])
def test_bad_input_table(row_id, script, argv, outcome, pattern, mains, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    ph = make_inputs(d)
    prepare(row_id, d)
    before = {p: sha(p) for p in d.rglob("*") if p.is_file() and not p.is_symlink()
              and not re.search(r"\.part$|\.tmp\d+", p.name)}  # stale temps are no input
    args = [a.format(**ph) for a in argv.split()]
    capsys.readouterr()
    rc = mains[script](args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    if outcome == "error":
        assert rc == 2, (out, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        if isinstance(pattern, set):  # a shape row: the file and a line of the wrong section
            m = re.match(r"error: (.*?):(\d+): ", lines[0])
            assert m and m[1].endswith(".cfg") and int(m[2]) in pattern, lines[0]
        else:
            assert re.search(pattern, lines[0]), lines[0]
        assert ".part" not in lines[0]
    else:
        assert rc == 0, err
        warns = [ln for ln in lines if ln.startswith("warning:")]
        if outcome == "warn":
            assert len(warns) == 1 and re.search(pattern, warns[0]), err
        else:
            assert not [w for w in warns if "image" in w or "BOM" in w], err
            assert re.search(pattern, out + err), out
    after = {p: sha(p) for p in before if p.exists()}
    assert after == before, "an input file was changed or removed"
    if row_id == "temp-cleared":
        assert sorted(p.name for p in d.glob("*.weights")) == [
            "good.weights", "huge.weights", "inf.weights", "nan.weights", "o.weights"]
        assert not list(d.glob(".*.part*")) and not list(d.glob("*.tmp*"))
    if row_id == "bom-evaluate":
        m = json.loads((Path(ph["out"]) / "metrics.json").read_text())
        assert m["args"]["data"].endswith("bom.data")


def test_table_covers_every_script_and_kind():
    by_script = {s: 0 for s in (*SCRIPTS, *TOOLS)}
    kinds = {}
    for row_id, script, *_ in ROWS:
        by_script[script] += 1
        kinds[row_id.split("-")[0]] = kinds.get(row_id.split("-")[0], 0) + 1
    assert min(by_script[s] for s in SCRIPTS) >= 4 and min(by_script[t] for t in TOOLS) >= 2, by_script
    assert {"loss", "flag", "silent", "nan", "inf", "bom", "warn", "temp", "shape"} <= set(kinds)


def test_onnx_temp_is_not_an_onnx(tmp_path, mains, capsys):
    """A stale temp of a killed ONNX export is hidden from *.onnx and removed by the next export."""
    d = tmp_path
    make_inputs(d)
    stale = d / f".m.onnx.{BIG_PID}.part"
    stale.write_bytes(b"half")
    legacy = d / f"m.onnx.tmp{BIG_PID}.onnx"
    legacy.write_bytes(b"half")
    assert sorted(p.name for p in d.glob("*.onnx")) == [legacy.name]  # the old naming's flaw
    rc = mains["export"](["--cfg", str(d / "good.cfg"), "--weights", str(d / "good.weights"),
                          "--format", "onnx", "--img-size", "32", "--output", str(d / "m.onnx")])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in d.glob("*.onnx")) == ["m.onnx"]
    assert not stale.exists() and not list(d.glob(".*.part*"))


def test_guard_and_temp_helpers(tmp_path):
    from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
    from yolo_slim.core.paths import guard_outputs, temp_path, user_path
    f = tmp_path / "a.weights"
    f.write_bytes(b"x")
    guard_outputs({"--weights": str(f)}, {"--output": [str(tmp_path / "b.weights")]})
    with pytest.raises(YoloSlimError, match=r"--output: .*/\.\./a\.weights would overwrite the input --weights"):
        guard_outputs({"--weights": str(f)}, {"--output": [str(tmp_path / "sub" / ".." / "a.weights")]})
    t = temp_path(str(f))
    assert not t.endswith(".weights") and os.path.basename(t).startswith(".")
    assert user_path(t) == str(f)
    atomic_write_bytes(str(f), b"y")
    assert f.read_bytes() == b"y" and sorted(os.listdir(tmp_path)) == ["a.weights"]
