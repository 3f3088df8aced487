"""The training engine on a tiny synthetic set: loss goes down, outputs and hooks, resume equals
an uninterrupted run, a non-finite loss stops cleanly, DDP with 2 gloo processes."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import socket

import cv2
import pytest
import torch
import torch.multiprocessing as mp

from yolo_slim.core import device as dv
from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.train.engine import TrainConfig, TrainHooks, train
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.nn.model import Darknet
from yolo_slim.nn.weights import model_from_checkpoint, read_checkpoint

from cfgs import conv_section, tiny_detector_cfg

TINY = tiny_detector_cfg(conv_section(8, 3, 2), conv_section(16, 3, 2), conv_section(16, 3, 2))


def tiny_model(seed: int = 0) -> Darknet:
    torch.manual_seed(seed)
    return Darknet(parse_cfg_text(TINY))


def config(data: str, out, **kw) -> TrainConfig:
    base = dict(data=data, output_dir=str(out), img_size=64, batch_size=4, nominal_batch=4,
                epochs=2, workers=0, device="cpu", progress=False, warmup_epochs=1.0)
    return TrainConfig(**{**base, **kw})


def rows(out) -> list[dict]:
    with open(os.path.join(out, "results.csv")) as f:
        return list(csv.DictReader(f))


class Recorder(TrainHooks):
    def __init__(self):
        self.steps, self.sizes, self.ends, self.dtypes = [], set(), [], set()

    def extra_loss(self, imgs, raw, targets):
        self.sizes.add(imgs.shape[-1])
        self.dtypes.add(raw[0].dtype)
        return raw[0].float().mean() * 0.0 + 0.5, {"kd": 0.5}

    def after_backward(self, model, step):
        self.steps.append(step)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    def epoch_end(self, epoch, model):
        self.ends.append(epoch)
        return {"gamma_mean": model.module_list[0].bn.weight.detach().abs().mean().item()}


def test_training_lowers_loss_and_writes_outputs(shapes_data, tmp_path):
    hooks = Recorder()
    cfg = config(shapes_data, tmp_path, epochs=12, batch_size=2, nominal_batch=4, lr0=0.02,
                 warmup_epochs=0.5, eval_interval=6, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0,
                 scale=0, translate=0)
    out = train(cfg, tiny_model(), [hooks])
    r = rows(tmp_path)
    assert [int(x["epoch"]) for x in r] == list(range(12))
    yolo = [sum(float(x[k]) for k in ("box", "obj", "cls")) for x in r]
    assert sum(yolo[-3:]) < 0.75 * sum(yolo[:3]), yolo
    assert float(r[0]["kd"]) == 0.5 and r[0]["gamma_mean"] and r[0]["map50"] == ""
    assert r[5]["map50"] != "" and r[11]["map50"] != ""  # eval every 6 epochs + the last
    # 8 images, batch 2 -> 4 micro-batches, accumulate 2 -> hooks run at micro-steps 1 and 3
    assert hooks.steps[:4] == [1, 3, 5, 7] and len(hooks.steps) == 24
    assert hooks.ends == list(range(12)) and hooks.sizes == {64}
    opt = json.loads((tmp_path / "opt.json").read_text())
    assert (opt["img_size"], opt["accumulate"], opt["world_size"], opt["epochs"]) == (64, 2, 1, 12)
    png = cv2.imread(str(tmp_path / "results.png"))
    assert png is not None and png.shape[0] >= 200 and png.shape[1] >= 1200
    ck = read_checkpoint(out["last"])
    assert ck["epoch"] == 11 and len(ck["results"]) == 12 and ck["seen"] == 12 * 8
    # training runs channels-last; what is saved is in the standard layout
    for part in ("model", "train_model"):
        assert all(v.is_contiguous() for v in ck[part].values()), part
    amp = dv.amp_dtype(torch.device("cpu"))
    assert hooks.dtypes == {amp or torch.float32}  # the forward ran in the recorded precision
    assert opt["amp"] is True and opt["amp_dtype"] == (str(amp).replace("torch.", "") if amp else "off")
    assert ck["amp_dtype"] == opt["amp_dtype"]
    best = model_from_checkpoint(out["best"])
    assert sum(p.numel() for p in best.parameters()) == sum(p.numel() for p in tiny_model().parameters())
    assert not any(f.endswith(".tmp") or ".tmp" in f for f in os.listdir(tmp_path))


class StopAt(TrainHooks):
    def __init__(self, epoch):
        self.epoch = epoch

    def epoch_start(self, epoch, model):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_equals_uninterrupted_run(shapes_data, tmp_path):
    kw = dict(epochs=2, batch_size=2, nominal_batch=4, mosaic=0.5, eval_interval=1,
              multi_scale=True)
    straight = tiny_model()
    train(config(shapes_data, tmp_path / "a", **kw), straight)
    with pytest.raises(KeyboardInterrupt):
        train(config(shapes_data, tmp_path / "b", **kw), tiny_model(), [StopAt(1)])
    assert read_checkpoint(str(tmp_path / "b" / "last.pt"))["epoch"] == 0
    resumed = model_from_checkpoint(str(tmp_path / "b" / "last.pt"))
    # the resumed run takes its config from the checkpoint; runtime flags may differ
    train(TrainConfig(resume=str(tmp_path / "b" / "last.pt"), device="cpu", workers=0, progress=False),
          resumed)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    ca, cb = (read_checkpoint(str(tmp_path / d / "last.pt")) for d in "ab")
    for k, v in ca["model"].items():  # the EMA weights
        assert torch.equal(v, cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in ra] == \
           [{k: v for k, v in r.items() if k != "time_s"} for r in rb]


class NaNAt(TrainHooks):
    def __init__(self):
        self.epoch = 0

    def epoch_start(self, epoch, model):
        self.epoch = epoch

    def extra_loss(self, imgs, raw, targets):
        return (torch.tensor(float("nan")), {}) if self.epoch == 1 else None


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(shapes_data, tmp_path):
    with pytest.raises(YoloSlimError, match=r"non-finite loss at epoch 1 step 0 .*last good "
                                            r"checkpoint kept at .*last\.pt"):
        train(config(shapes_data, tmp_path, epochs=3), tiny_model(), [NaNAt()])
    ck = read_checkpoint(str(tmp_path / "last.pt"))
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values()
                                    if v.dtype.is_floating_point)


def test_cli_weights_is_a_fresh_start(shapes_data, tmp_path, run_script):
    (tmp_path / "tiny.cfg").write_text(TINY)
    args = ["--cfg", tmp_path / "tiny.cfg", "--data", shapes_data, "--img-size", "64", "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "--no-progress", "--epochs", "1"]
    rc, so, se = run_script("train_sparse.py", *args, "--output-dir", tmp_path / "r1")
    assert rc == 0, se
    rc, so, se = run_script("train_sparse.py", *args, "--output-dir", tmp_path / "r2",
                            "--weights", tmp_path / "r1" / "last.pt")
    assert rc == 0, se
    assert [r["epoch"] for r in rows(tmp_path / "r2")] == ["0"]
    assert json.loads((tmp_path / "r2" / "opt.json").read_text())["weights"].endswith("last.pt")
    rc, so, se = run_script("train_sparse.py", *args, "--img-size", "70", "--output-dir", tmp_path / "r3")
    assert rc == 2 and "multiple of 8" in se and "Traceback" not in se
    # from scratch, the same command (same --seed) in another process trains the same model:
    # the initial weights are seeded too
    rc, so, se = run_script("train_sparse.py", *args, "--output-dir", tmp_path / "r4")
    assert rc == 0, se
    a, b = (read_checkpoint(str(tmp_path / d / "last.pt")) for d in ("r1", "r4"))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str, log_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    written, real_replace = [], os.replace

    def spy(src, dst, *a, **k):  # every file the engine writes goes through temp + rename
        written.append(str(dst))
        return real_replace(src, dst, *a, **k)

    os.replace = spy
    model = tiny_model(seed=rank)  # different inits: DDP must broadcast rank 0's
    # with the sparsity hook on: the L1 step runs after the all-reduce, identically per rank
    from yolo_slim.train.sparse_setup import make_train_hooks
    cfg = config(data, out, epochs=1, batch_size=4, nominal_batch=4, sr=True, s=0.01, prune=1)
    train(cfg, model, make_train_hooks(cfg, model))
    os.replace = real_replace
    torch.save({"params": [p.detach() for p in model.parameters()], "written": written},
               os.path.join(log_dir, f"rank{rank}.pt"))


def test_ddp_two_cpu_processes(shapes_data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "run")
    mp.spawn(_ddp_worker, args=(2, port, shapes_data, out, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    assert r1["written"] == [] and {os.path.basename(p) for p in r0["written"]} >= {
        "opt.json", "results.csv", "results.png", "last.pt", "best.pt", "gamma_hist.png"}
    with open(os.path.join(out, "results.csv")) as f:
        assert float(next(csv.DictReader(f))["s_mean"]) == pytest.approx(0.01)
    ck = read_checkpoint(os.path.join(out, "last.pt"))
    assert ck["seen"] == 8  # 2 steps x 2 ranks x 2 images
    assert json.loads(open(os.path.join(out, "opt.json")).read())["world_size"] == 2
    assert not dataclasses.asdict(TrainConfig())["sr"]  # the default run has no sparsity


def test_mixed_precision_and_loader_choices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert dv.amp_dtype(cuda) == torch.float16 and dv.amp_dtype(cuda, enabled=False) is None
    monkeypatch.setattr(dv, "cpu_has_bf16", lambda: True)
    assert dv.amp_dtype(cpu) == torch.bfloat16
    monkeypatch.setenv("YOLO_SLIM_CPU_BF16", "0")
    assert dv.amp_dtype(cpu) is None
    monkeypatch.delenv("YOLO_SLIM_CPU_BF16")
    monkeypatch.setattr(dv, "cpu_has_bf16", lambda: False)
    assert dv.amp_dtype(cpu) is None  # emulated bf16 would be slower than fp32
    for cpus, on_cpu, on_gpu in ((2, 0, 2), (4, 0, 4), (16, 4, 8), (64, 8, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cpus: set(range(c)), raising=False)
        assert (dv.auto_workers(cpu), dv.auto_workers(cuda)) == (on_cpu, on_gpu), cpus
        assert dv.auto_workers(cpu, 3) == 3 and dv.auto_workers("cuda") == on_gpu  # a device or its type
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 64 cores shared by 4 torchrun ranks: 16 each
    assert (dv.auto_workers(cpu), dv.auto_workers(cuda)) == (4, 8)
