"""Teacher distillation for fine-tuning a pruned student.

- hinton: KL divergence between temperature-softened teacher and student outputs on the
  objectness and class logits, × T². YOLO's objectness and classes are independent sigmoids,
  so the divergence is a *binary* KL per logit — not a softmax over [obj, cls...], which is
  what older tools computed and which couples unrelated outputs.
- chen (Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge
  Distillation"): the same KL, plus a bounded L2 box loss at the positive anchors: the
  student's box is pulled to the ground truth only where it is farther from it than the
  teacher's box plus a margin, so a weak teacher never drags a better student back. Distances
  are taken in (x, y, log w, log h), where they are bounded (box_space).

The teacher is frozen: eval mode (its BN statistics never move), requires_grad off, run under
no_grad, in the training's autocast (fp16 on CUDA, bf16 on CPUs with it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.nn.model import Darknet
from yolo_slim.train.config import KD_MODES, KDOptions
from yolo_slim.train.hooks import TrainHooks
from yolo_slim.train.loss import LossHyp, loss_gains


def binary_kl_with_logits(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """Element-wise KL(σ(t/T) ‖ σ(s/T)) for independent sigmoid outputs, × T².

    Written as BCE(s/T, p_t) − BCE(t/T, p_t) (cross-entropy minus the teacher's entropy), both
    from logits, so it is exactly 0 when student == teacher and stable for large logits.
    """
    teacher = teacher.detach()  # the teacher is a target, never trained through this loss
    p_t = torch.sigmoid(teacher / T)
    ce = F.binary_cross_entropy_with_logits(student / T, p_t, reduction="none")
    ent = F.binary_cross_entropy_with_logits(teacher / T, p_t, reduction="none")
    return (ce - ent).clamp_min(0) * (T * T)


def hinton_loss(student_raw: list[torch.Tensor], teacher_raw: list[torch.Tensor],
                T: float = 2.0, g_obj: float = 1.0, g_cls: float = 1.0) -> torch.Tensor:
    """Per head, g_obj × the mean objectness KL + g_cls × the mean class KL (over every cell,
    anchor and class), summed over heads. The distillation hook passes the YOLO loss's scaled
    objectness/class gains (loss_gains), so soft targets weigh like hard ones."""
    total = student_raw[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_raw, teacher_raw):
        kl = binary_kl_with_logits(s[..., 4:].float(), t[..., 4:].float(), T)
        obj, cls = kl[..., 0], kl[..., 1:]
        total = total + g_obj * obj.mean() + (g_cls * cls.mean() if cls.numel() else 0.0)
    return total


def bounded_box_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                     margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Chen's bounded L2 box regression over n positive anchors ([n, 4] boxes each).

    Each anchor contributes ‖s − y‖² if ‖s − y‖² + margin > ‖t − y‖² (the student is not yet
    better than the teacher by the margin), else 0. Returns (mean loss, fraction active).
    """
    if student.numel() == 0:
        z = student.new_zeros(())
        return z, z
    ds = (student - target).square().sum(-1)
    dt = (teacher.detach() - target).square().sum(-1)
    active = (ds + margin > dt).to(ds.dtype)
    return (ds * active).mean(), active.mean()


def box_space(box: torch.Tensor) -> torch.Tensor:
    """(x, y offset in cell, w, h in grid units) -> (x, y, log w, log h): the space YOLO
    regresses in. Distances of raw w, h are not bounded: a damaged student's exp(tw) reaches
    e^6 anchors and one anchor's squared error 1e5, which swamped every other term (a 36% cut of
    the COCO yolov3-tiny: kd_box 19,419 then 100,101 in two epochs). In log space the clamp on
    tw bounds it, and a box twice too big costs what a box half too big costs."""
    return torch.cat([box[:, :2], box[:, 2:].clamp_min(1e-3).log()], 1)


def chen_box_loss(student_raw: list[torch.Tensor], teacher_raw: list[torch.Tensor],
                  targets: torch.Tensor, heads, img_hw: tuple[int, int], anchor_t: float,
                  margin: float = 0.0) -> tuple[torch.Tensor, float]:
    """bounded_box_loss at the positive anchors the YOLO loss assigns (same build_targets and
    box decoding), summed over heads. Returns (loss, fraction of positive anchors active)."""
    from yolo_slim.train.loss import build_targets, decode_box
    box = student_raw[0].new_zeros((), dtype=torch.float32)
    active, n = 0.0, 0
    assigned = build_targets(student_raw, targets.float(), heads, img_hw, anchor_t)
    for h, s, t, (b, a, gj, gi, tbox, anc, _) in zip(heads, student_raw, teacher_raw, assigned):
        if not len(b):
            continue
        sb = box_space(decode_box(s[b, a, gj, gi].float(), anc, h))
        tb = box_space(decode_box(t[b, a, gj, gi].float(), anc, h))
        loss, frac = bounded_box_loss(sb, tb, box_space(tbox), margin)
        box, active, n = box + loss, active + float(frac) * len(b), n + len(b)
    return box, active / max(n, 1)


def check_heads_match(student: Darknet, teacher: Darknet) -> None:
    """Student and teacher must predict the same things in the same places."""
    s, t = student.heads, teacher.heads
    problem = None
    if len(s) != len(t):
        problem = f"{len(s)} YOLO heads vs the teacher's {len(t)}"
    else:
        for k, (a, b) in enumerate(zip(s, t)):
            if a.nc != b.nc:
                problem = f"head {k}: {a.nc} classes vs the teacher's {b.nc}"
            elif a.anchors.shape != b.anchors.shape or not torch.allclose(a.anchors, b.anchors):
                problem = (f"head {k}: anchors {a.anchors.flatten().tolist()} vs the teacher's "
                           f"{b.anchors.flatten().tolist()}")
            if problem:
                break
    if problem:
        raise YoloSlimError(f"student and teacher heads do not match ({problem}); distillation "
                            "needs the same YOLO heads (anchors, masks, classes) in both cfgs")


@dataclass
class DistillConfig:
    mode: str = "hinton"
    temperature: float = 2.0
    kd_weight: float = 1.0     # weight of the KL term
    box_weight: float = 0.5    # weight of chen's bounded box term
    margin: float = 0.0        # chen's margin on squared distances (grid units)

    def __post_init__(self) -> None:
        if self.mode not in KD_MODES:
            raise YoloSlimError(f"--kd must be one of {KD_MODES}, not {self.mode!r}")


def distill_config(o: KDOptions) -> DistillConfig:
    """The loss settings of distill.py's flags (KDOptions, composed into its training config)."""
    return DistillConfig(o.kd, o.temperature, o.kd_weight, o.box_weight, o.margin)


def make_distill_hook(student: Darknet, teacher, cfg: DistillConfig,
                      hyp: LossHyp | None = None):
    """The engine hook adding the distillation terms to the student's YOLO loss. `teacher` is
    a Darknet or a train.teacher.TeacherRunner (shared with --labels teacher: one forward).

    The KL terms use the YOLO loss's objectness/class gains (same image-size and head scaling),
    so kd_weight=1 weighs soft targets like hard ones; chen's targets use its anchor_t. Those
    come from the LossHyp the training's YOLO loss uses: the engine hands it to the hook
    (use_loss_hyp) before the first step, so --obj/--cls (and a resumed run's saved values)
    reach both. `hyp` only matters when the hook is called outside the engine."""
    from yolo_slim.train.teacher import TeacherRunner
    if cfg.mode == "none" or teacher is None:
        return None
    runner = teacher if isinstance(teacher, TeacherRunner) else TeacherRunner(teacher)
    check_heads_match(student, runner.model)
    if hyp is None:
        hyp = LossHyp()

    class DistillHook(TrainHooks):
        def __init__(self, hyp: LossHyp) -> None:
            self.hyp = hyp

        def use_loss_hyp(self, hyp: LossHyp) -> None:
            self.hyp = hyp

        def extra_loss(self, imgs: torch.Tensor, raw: list[torch.Tensor], targets: torch.Tensor):
            t_raw = runner.raw(imgs)  # in the engine's autocast (bf16/fp16) when it has one
            raw = [r.float() for r in raw]  # the KD terms in fp32 whatever the autocast dtype
            hw = tuple(imgs.shape[-2:])
            heads = student.heads
            _, g_obj, g_cls = loss_gains(self.hyp, hw, len(heads), heads[0].nc)
            loss = cfg.kd_weight * hinton_loss(raw, t_raw, cfg.temperature, g_obj, g_cls)
            logs = {"kd": float(loss.detach())}
            if cfg.mode == "chen":
                box, active = chen_box_loss(raw, t_raw, targets.to(imgs.device), heads, hw,
                                            self.hyp.anchor_t, cfg.margin)
                loss = loss + cfg.box_weight * box
                logs.update(kd_box=float(cfg.box_weight * box.detach()), kd_box_active=active)
            return loss, logs

    return DistillHook(hyp)
