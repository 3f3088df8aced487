"""The engine's numbers pinned: a tiny seeded fp32 run of two optimizer steps gives these losses,
learning rates and weights. Other engine tests compare runs with each other (resume = straight
run); this one catches a change of the numeric path itself (step order, accumulation, warm-up,
schedule) that moves every run alike. Values recorded at the commit that split engine._train
(bit-identical to the loop before the split); fp32 summation order moves them by < 3e-7
relative between 1 and 2 threads."""
from __future__ import annotations

import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet
from yolo_slim.train.engine import TrainConfig, train

from cfgs import conv_section, tiny_detector_cfg

TINY = tiny_detector_cfg(conv_section(8, 3, 2), conv_section(16, 3, 2), conv_section(16, 3, 2))

# per epoch: lr of its last micro-batch, then the mean YOLO loss terms over its 2 micro-batches
PINNED = [
    {"lr": 0.004275089283436705, "box": 7.049944162368774, "obj": 1.352933943271637,
     "cls": 4.143906354904175, "total": 12.546784400939941},
    {"lr": 0.0015498214331265902, "box": 7.345452070236206, "obj": 1.3055163025856018,
     "cls": 4.006930589675903, "total": 12.657898426055908},
]


def test_two_steps_pinned(shapes_data, tmp_path):
    torch.manual_seed(0)
    model = Darknet(parse_cfg_text(TINY))
    init = [p.detach().double().clone() for p in model.parameters()]
    # 8 images, batch 4, nominal batch 8: 2 micro-batches and 1 optimizer step per epoch
    cfg = TrainConfig(data=shapes_data, output_dir=str(tmp_path), img_size=64, batch_size=4,
                      nominal_batch=8, epochs=2, workers=0, device="cpu", progress=False,
                      warmup_epochs=1.0, amp=False, ema=False)
    rows = train(cfg, model)["results"]
    assert [r["epoch"] for r in rows] == [0, 1]
    for row, want in zip(rows, PINNED):
        assert row["lr"] == pytest.approx(want["lr"], rel=1e-12)  # pure arithmetic
        for k in ("box", "obj", "cls", "total"):
            assert row[k] == pytest.approx(want[k], rel=1e-6), (row["epoch"], k)
    assert model.seen == 16
    # how far the two steps moved the weights; a difference of fp32 weights, so it carries their
    # rounding (8e-7 relative between 1 and 2 threads)
    moved = sum((p.detach().double() - q).pow(2).sum() for p, q in zip(model.parameters(), init))
    assert moved.sqrt().item() == pytest.approx(0.15024023010134263, rel=1e-5)
