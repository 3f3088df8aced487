"""Train a darknet-cfg YOLO detector; with --sr, sparsity training (L1 on BN gamma).

  python train_sparse.py --cfg cfg/demo.cfg --data data/shapes/shapes.data --epochs 30
  python train_sparse.py --cfg cfg/demo.cfg --data d.data --weights best.pt      # fresh start
  python train_sparse.py --cfg my-3class.cfg --data d.data --weights yolov3.weights \
      --transfer --weights-cfg cfg/yolov3.cfg      # COCO weights, other class count: heads fresh
  python train_sparse.py --cfg cfg/yolov3.cfg --data d.data --weights darknet53.conv.74 --transfer
  python train_sparse.py --resume runs/train/last.pt                            # continue
  torchrun --nproc_per_node 2 train_sparse.py --cfg ... --data ... --device cpu  # DDP

  python train_sparse.py -sr --cfg yolov3-tiny.cfg --weights yolov3-tiny.weights \
      --data my-unlabeled.data --labels teacher   # label-free: the given model labels each batch
Every flag of yolo_slim.train.engine.TrainConfig is accepted (--kebab-case); the resolved config is
written to <output-dir>/opt.json next to last.pt, best.pt, results.csv and results.png.
`yolo-slim train` and `python train_sparse.py` are this command.
"""
from __future__ import annotations

import os
from typing import Sequence

from yolo_slim.core.cli import Parser
from yolo_slim.core.errors import YoloSlimError, cli_main


def parser() -> Parser:
    """Every TrainConfig field is a flag (and a recipe key: --config)."""
    from yolo_slim.train.config import TrainConfig
    p = Parser(description=__doc__)
    TrainConfig.add_args(p)
    p.set_defaults(resume="")
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    from yolo_slim.core.cli import parse_given, refuse_changed
    from yolo_slim.core.device import seed_all
    from yolo_slim.train.engine import (RUN_FILES, RUNTIME_FIELDS, TrainConfig, resume_config,
                                        score_line, train)
    from yolo_slim.nn.weights import load_model, load_transfer, model_from_checkpoint
    ns, given = parse_given(parser(), argv)
    if ns is None:  # --help
        return 0
    cfg = TrainConfig.from_args(ns)
    if cfg.resume:
        saved, path = resume_config(cfg)
        # a flag given with --resume that the run would ignore (say --epochs) is an error
        refuse_changed(saved, cfg, given, (*RUNTIME_FIELDS, "output_dir"), "--resume")
        model = model_from_checkpoint(path)  # architecture from the run itself
        cfg_for_hooks = saved
    else:
        if not cfg.data:
            raise YoloSlimError("--data is required")
        if not cfg.cfg and not cfg.weights.endswith(".pt"):
            raise YoloSlimError("--cfg is required (unless --weights is a yolo-slim .pt)")
        from yolo_slim.core.paths import guard_outputs
        from yolo_slim.data.inputs import data_inputs
        guard_outputs({"--cfg": cfg.cfg, "--weights": cfg.weights, "--weights-cfg": cfg.weights_cfg,
                       **data_inputs(cfg.data)},
                      {"--output-dir": [os.path.join(cfg.output_dir, f) for f in RUN_FILES]})
        # --seed covers the initial weights too (of the whole model, or of the layers --transfer
        # leaves): the same command trains the same model
        seed_all(cfg.seed)
        if cfg.transfer:
            if not (cfg.cfg and cfg.weights):
                raise YoloSlimError("--transfer needs --cfg (the model to train) and --weights")
            model = load_model(cfg.cfg, None)
            t = load_transfer(model, cfg.weights, cfg.weights_cfg or None)
            print(f"--transfer ({t['mode']}): {len(t['loaded'])} conv layers loaded from "
                  f"{cfg.weights}, {len(t['kept_init'])} keep their initialisation "
                  f"{t['kept_init'] if len(t['kept_init']) <= 12 else ''}".rstrip())
        elif cfg.weights_cfg:
            raise YoloSlimError("--weights-cfg is for --transfer")
        else:
            model = load_model(cfg.cfg or None, cfg.weights or None)
        cfg_for_hooks = cfg
    from yolo_slim.tools.latency import sparse_hooks  # + the latency table and timer it needs
    from yolo_slim.train.teacher import teacher_label_hooks
    hooks = sparse_hooks(cfg_for_hooks, model, resumed=bool(cfg.resume))
    if cfg_for_hooks.labels == "teacher":  # the model as it was given, frozen, labels the batches
        from yolo_slim.train.teacher import TeacherRunner
        from yolo_slim.nn.weights import load_model as load
        if not cfg_for_hooks.weights or cfg_for_hooks.transfer:
            raise YoloSlimError("--labels teacher labels with the model it starts from: give "
                                "--weights (not --transfer: a fresh head detects nothing)")
        hooks += teacher_label_hooks(cfg_for_hooks, TeacherRunner(
            load(cfg_for_hooks.cfg or None, cfg_for_hooks.weights)))
    summary = train(cfg, model, hooks)
    last = summary["results"][-1] if summary["results"] else {}
    print(f"done: {summary['output_dir']} (last.pt, best.pt, results.csv); "
          f"last epoch {score_line(last)}")
    return 0
