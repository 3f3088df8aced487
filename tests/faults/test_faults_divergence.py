"""Training that diverges: a non-finite loss or non-finite weights (the loss may stay finite,
1e30, while BN running_var overflows) stop the run with one line naming the epoch, the step and
the term or tensor; no checkpoint is ever written holding a non-finite value, and the last good
last.pt/best.pt stay."""
from __future__ import annotations

import os

import pytest
import torch

from faultkit import TINY, TRAIN, one_error_line, run, temps


def all_finite(path: str) -> bool:
    from yolo_slim.nn.weights import read_checkpoint
    ck = read_checkpoint(path)
    return all(torch.isfinite(v).all() for key in ("model", "train_model") if key in ck
               for v in ck[key].values() if v.is_floating_point())


@pytest.mark.filterwarnings("ignore")
def test_huge_learning_rate_stops_at_the_first_non_finite_weight(tiny, capsys):
    """`train_sparse.py --lr0 1e6` used to run to the end and save inf running variances."""
    out = os.path.join(tiny["d"], "run")
    rc, _, err = run("train_sparse", capsys, "--cfg", tiny["cfg"], "--data", tiny["data"],
                     "--epochs", "4", "--lr0", "1e6", "--warmup-epochs", "0", "--output-dir", out,
                     *TRAIN)
    assert rc == 2
    one_error_line(err, r"non-finite (weights|loss) at epoch \d+ step \d+.*(conv layer \d+ .*"
                        r"(BN|kernel|bias)|box|obj|cls)")
    for name in ("last.pt", "best.pt"):
        path = os.path.join(out, name)
        assert not os.path.exists(path) or all_finite(path), name
    assert not temps(out)


class Poison:
    """From epoch 1 on, after the optimizer step: an inf into one BN gamma (the loss stays finite
    until the next forward), or a NaN loss term of its own."""

    def __init__(self, what: str):
        self.what, self.epoch = what, 0

    def epoch_start(self, epoch, model):
        self.epoch = epoch

    def after_step(self, model, optimizer, lr, progress):
        if self.what == "weights" and self.epoch == 1:
            with torch.no_grad():
                model.module_list[1].bn.weight[3] = float("inf")

    def extra_loss(self, imgs, raw, targets):
        if self.what == "loss" and self.epoch == 1:
            return raw[0].sum() * float("nan"), {"kd": float("nan")}
        return None


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("what, pattern", [
    ("weights", r"non-finite weights at epoch 1 step 0: .*conv layer 1 \(cfg line \d+\): BN gamma "
                r"holds 1 inf"),
    ("loss", r"non-finite loss at epoch 1 step 0 in kd \(.*kd=nan")])
def test_divergence_keeps_the_last_good_checkpoints(what, pattern, tmp_path, shapes_data, capsys):
    from yolo_slim.core.errors import cli_main
    from yolo_slim.darknet.cfg import parse_cfg_text
    from yolo_slim.nn.model import Darknet
    from yolo_slim.nn.weights import read_checkpoint
    from yolo_slim.train.engine import TrainConfig, TrainHooks, train
    hook = type("PoisonHook", (Poison, TrainHooks), {})(what)
    torch.manual_seed(0)
    cfg = TrainConfig(data=shapes_data, output_dir=str(tmp_path), img_size=64, batch_size=4,
                      nominal_batch=4, epochs=3, workers=0, device="cpu", progress=False)
    rc = cli_main(lambda argv: train(cfg, Darknet(parse_cfg_text(TINY)), [hook]))([])
    assert rc == 2
    one_error_line(capsys.readouterr().err, pattern + r".*last good checkpoint .*last\.pt")
    for name in ("last.pt", "best.pt"):
        assert read_checkpoint(str(tmp_path / name))["epoch"] == 0 and all_finite(str(tmp_path / name))


def test_no_checkpoint_or_weights_file_is_written_non_finite(tmp_path):
    from yolo_slim.core.errors import YoloSlimError
    from yolo_slim.darknet.cfg import parse_cfg_text
    from yolo_slim.nn.model import Darknet
    from yolo_slim.nn.weights import save_checkpoint, save_darknet_weights, state_tensors
    m = Darknet(parse_cfg_text(TINY))
    save_checkpoint(m, str(tmp_path / "a.pt"))
    save_darknet_weights(m, str(tmp_path / "a.weights"))
    before = {p: (tmp_path / p).read_bytes() for p in ("a.pt", "a.weights")}
    good = {k: v.clone() for k, v in state_tensors(m).items()}
    with torch.no_grad():
        m.module_list[2].bn.running_var[0] = float("nan")
    with pytest.raises(YoloSlimError, match=r"a\.pt: .*conv layer 2 .*BN running_var holds 1 NaN"):
        save_checkpoint(m, str(tmp_path / "a.pt"))
    with pytest.raises(YoloSlimError, match=r"a\.weights: .*conv layer 2 .*running_var holds 1 NaN"):
        save_darknet_weights(m, str(tmp_path / "a.weights"))
    m.load_state_dict(good)
    bad = {k: v.clone() for k, v in good.items()}
    bad["module_list.0.conv.weight"][0, 0, 0, 0] = float("inf")
    with pytest.raises(YoloSlimError, match=r"b\.pt: train_model: module_list\.0\.conv\.weight holds 1 inf"):
        save_checkpoint(m, str(tmp_path / "b.pt"), train_model=bad)
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "a.weights"]
