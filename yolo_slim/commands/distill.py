"""Fine-tune a pruned student, optionally distilling from a frozen teacher.

  python distill.py --cfg pruned/demo.cfg --weights pruned/demo.weights --data d.data \
      --t-cfg cfg/demo.cfg --t-weights baseline/best.pt --kd chen --epochs 10
  python distill.py --cfg pruned.cfg --weights pruned.weights --data d.data --kd none  # plain

--kd hinton: binary KL on objectness/class logits (temperature --temperature, × T²);
--kd chen:   the same + Chen et al.'s bounded L2 box loss at the positive anchors.
--labels teacher (label-free): the teacher's detections on each augmented batch (score >=
--teacher-conf) are the targets, and validation scores agreement with the teacher.
Every training flag of train_sparse.py is accepted, -sr too: sparse training (prox to a
--target-flops, say) with the teacher's soft targets pulling the shrinking student back to it
(`--sparsity-weight latency` then needs `--latency-table`). The final student is written as
<output-dir>/<stem>.cfg + <stem>.weights (from best.pt), ready for export.py.
`yolo-slim distill` and `python distill.py` are this command.
"""
from __future__ import annotations

import os
from typing import Sequence

from yolo_slim.core.cli import Parser, add_dataclass_args
from yolo_slim.core.errors import YoloSlimError, cli_main
from yolo_slim.train.config import DistillTrainConfig


def parser() -> Parser:
    """Every field of DistillTrainConfig (the training flags, then the distillation ones)."""
    p = Parser(description=__doc__)
    add_dataclass_args(p, DistillTrainConfig)
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    from yolo_slim.core.cli import from_args, parse_given, refuse_changed, write_resolved
    from yolo_slim.core.paths import guard_outputs
    from yolo_slim.data.inputs import data_inputs
    from yolo_slim.train.distill import distill_config, make_distill_hook
    from yolo_slim.train.teacher import load_teacher, teacher_label_hooks
    from yolo_slim.train.engine import RUN_FILES, RUNTIME_FIELDS, score_line, train
    from yolo_slim.nn.weights import load_model, export_run_model
    ns, given = parse_given(parser(), argv)
    if ns is None:  # --help
        return 0
    cfg: DistillTrainConfig = from_args(DistillTrainConfig, ns)
    if not cfg.data:
        raise YoloSlimError("--data is required")
    if not cfg.weights and not cfg.resume:
        raise YoloSlimError("--weights (the pruned student) is required")
    if cfg.resume:
        from yolo_slim.train.engine import resume_config
        from yolo_slim.nn.weights import model_from_checkpoint
        saved, ckpt = resume_config(cfg)
        # the distillation flags are the run's too: a changed --kd or --temperature is refused
        refuse_changed(saved, cfg, given, (*RUNTIME_FIELDS, "output_dir"), "--resume")
        src, out_dir = saved.cfg or saved.weights, saved.output_dir
    else:
        src, out_dir = cfg.cfg or cfg.weights, cfg.output_dir
    run_cfg = saved if cfg.resume else cfg  # a resumed run distils as it started
    kd = distill_config(run_cfg)
    if kd.mode != "none" and not run_cfg.t_weights:
        raise YoloSlimError(f"--kd {kd.mode} needs a teacher: --t-weights (and --t-cfg)")
    stem = os.path.splitext(os.path.basename(src))[0] or "student"  # --resume alone names no file
    outs = [os.path.join(out_dir, f) for f in (*RUN_FILES, f"{stem}.cfg", f"{stem}.weights", "args.json")]
    ins = {"--t-cfg": run_cfg.t_cfg, "--t-weights": run_cfg.t_weights, **data_inputs(cfg.data)}
    if not cfg.resume:  # a resumed run's last.pt is its own to rewrite
        ins.update({"--cfg": cfg.cfg, "--weights": cfg.weights})
    guard_outputs(ins, {"--output-dir": outs})
    if cfg.resume:
        model = model_from_checkpoint(ckpt)
    else:
        model = load_model(cfg.cfg or None, cfg.weights)
    if run_cfg.labels == "teacher" and not run_cfg.t_weights:
        raise YoloSlimError("--labels teacher needs a teacher: --t-weights (and --t-cfg)")
    runner = load_teacher(run_cfg.t_cfg, run_cfg.t_weights) if run_cfg.t_weights else None
    # no LossHyp here: the engine hands the hook the one its YOLO loss uses before the first step
    hook = make_distill_hook(model, runner, kd) if kd.mode != "none" else None
    hooks = teacher_label_hooks(run_cfg, runner) + ([hook] if hook else [])
    if run_cfg.sr:  # the sparsity hook first: it owns the optimizer step, KD only adds a loss
        from yolo_slim.tools.latency import sparse_hooks  # + the latency table and timer
        hooks = sparse_hooks(run_cfg, model, resumed=bool(cfg.resume)) + hooks
    summary = train(cfg, model, hooks)
    write_resolved(os.path.join(summary["output_dir"], "args.json"), ns)
    cfg_out, w_out = export_run_model(summary["output_dir"], stem)
    last = summary["results"][-1] if summary["results"] else {}
    print(f"done: {w_out} + {cfg_out}; last epoch {score_line(last)}")
    return 0
