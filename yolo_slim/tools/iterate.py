r"""Iterative pruning: N rounds of prune a little -> fine-tune a few epochs, with early stop.

  python -m yolo_slim.tools.iterate --cfg c.cfg --weights w.weights --data d.data --rounds 3 \
      --per-round-flops 0.8 --epochs-per-round 2 --max-drop 0.05 --output-dir runs/iter \
      [--importance l1] [--kd hinton] [--train lr0=0.002 --train workers=0]

Layout of --output-dir (every round's files are kept):
  iterate.json              the options (a resumed run must be started with the same ones)
  baseline.json             mAP@0.5 / FLOPs (/ ms) of the input model (the reference for --max-drop)
  round_k/prune/            prune_channels output of round k: <stem>.cfg/.weights, prune_report.json
  round_k/train/            the fine-tune run (engine: last.pt, best.pt, results.csv) and the
                            fine-tuned <stem>.cfg + <stem>.weights that round k+1 starts from
  round_k/round.json        written last: the round is complete
  summary.json              all rounds, and the last one within --max-drop

Each round cuts the *current* model to --per-round-flops x its FLOPs (so 3 rounds of 0.8 end near
0.51 of the original) — or, with --per-round-speedup X, to X times faster than the current model
on the deployment runtime (the latency table of prune_channels.py --target-speedup, measured and
re-solved until within 5%), fine-tunes it through the same engine as train_sparse.py / distill.py
(with --kd, the *original* model is the teacher), and evaluates mAP@0.5 on the first
--eval-images validation images. The loop stops after a round whose mAP@0.5 is more than
--max-drop below the baseline; that round's files stay, summary.json names the last round
within --max-drop.

--target-speedup X / --target-latency MS set the whole run instead (not with --per-round-*): each
round asks for the speed-up still missing, spread over the rounds left — (X / the speed-up so
far) ** (1 / rounds left), so X ** (1 / --rounds) in round 1; (current ms / MS) ** (1 / rounds
left) — and the loop stops once a fine-tuned model, timed interleaved with the original by the
same measure as the rounds, meets the target (round.json and summary.json hold the numbers).

Resume: run the same command again. Rounds with round.json are skipped; a pruned round is not
pruned again; a half-finished fine-tune continues from its last.pt via the engine's --resume.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import asdict
from typing import Any, Callable, Sequence

from yolo_slim.core.errors import TargetUnreachable, YoloSlimError, atomic_write_bytes, cli_main
from yolo_slim.analysis.graph import STRATEGIES
from yolo_slim.analysis.importance import IMPORTANCE
from yolo_slim.tools.iterate_options import (IterateOptions, changed_options,  # noqa: F401 (re-exported)
                                             check_targets, parse_train_overrides, parser)


# fine-tuning defaults that differ from training from scratch: no warm-up (the model is trained;
# warm-up's high bias LR would undo that) and a smaller LR
FINETUNE_DEFAULTS = {"lr0": 0.005, "warmup_epochs": 0.0}


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8-sig") as f:
        return json.load(f)


def _write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=str).encode())


def latency_gap(opts: IterateOptions, measure: Callable[..., dict], hw: tuple[int, int],
                original: Any, current: Any = None) -> dict[str, Any]:
    """The measured latency of `current` (None: the original) against the whole-run target:
    `remaining` is the speed-up still to gain (<= 1: met). Timed interleaved with the original,
    so the speed-up so far is a ratio from the same moments (machine load moves both)."""
    models = {"original": original, **({} if current is None else {"current": current})}
    cur = measure(models, hw)["models"][list(models)[-1]]
    speedup = 1 / cur["ratio_median"] if current is not None else 1.0
    rest = opts.target_speedup / speedup if opts.target_speedup else cur["median_ms"] / opts.target_latency
    return {"ms": cur["median_ms"], "speedup": speedup, "remaining": rest}


def _finetune(rd: str, cfg: str, weights: str, data: str, opts: IterateOptions, teacher,
              hooks: Sequence[Any]) -> str:
    """Fine-tune round `rd`'s pruned model (or resume it); returns the run dir."""
    from yolo_slim.train import engine
    from yolo_slim.nn.weights import load_model, model_from_checkpoint, read_checkpoint
    td = os.path.join(rd, "train")
    last = os.path.join(td, "last.pt")
    cfg_t = engine.TrainConfig(**{**FINETUNE_DEFAULTS, "progress": False, **opts.train,
                                  "cfg": cfg, "weights": weights, "data": data,
                                  "output_dir": td, "epochs": opts.epochs_per_round,
                                  "img_size": opts.img_size, "batch_size": opts.batch_size,
                                  "eval_subset": opts.eval_images})
    if os.path.isfile(last):
        if read_checkpoint(last).get("epoch", -1) >= opts.epochs_per_round - 1:
            return td  # finished before the interruption
        cfg_t = dataclasses.replace(cfg_t, resume=last)
        model = model_from_checkpoint(last)
    else:
        model = load_model(cfg, weights)
    all_hooks = list(hooks)
    if teacher is not None:
        from yolo_slim.train.distill import DistillConfig, make_distill_hook
        all_hooks.insert(0, make_distill_hook(model, teacher, DistillConfig(opts.kd)))
    engine.train(cfg_t, model, all_hooks)
    return td


@dataclasses.dataclass
class _Loop:
    """What every round reads: the inputs, the original model and its baseline, and how to cut
    (`cut`: PruneOptions' target fields, the per-round speed-up updated as the run goes)."""
    data: str
    out_dir: str
    opts: IterateOptions
    hooks: Sequence[Any]
    metric: Callable[[Any], float]
    original: Any
    hw: tuple[int, int]
    base: dict[str, Any]
    stem: str
    cut: dict[str, Any]
    measure: Callable[..., dict] | None = None
    table: str | None = None


def run(cfg: str | None, weights: str, data: str, out_dir: str, opts: IterateOptions,
        log=print, hooks: Sequence[Any] = (),
        metric: Callable[[Any], float] | None = None) -> dict[str, Any]:
    """The loop (see module docstring); `hooks` go to every fine-tune (tests use them)."""
    from yolo_slim.darknet.cfg import net_size
    from yolo_slim.nn.weights import load_model
    target = _check_options(opts)
    _claim_folder(out_dir, {"cfg": cfg, "weights": weights, "data": data, "options": asdict(opts)})
    model = load_model(cfg, weights)
    img = opts.img_size or net_size(model.module_defs)[1]
    if metric is None:
        from yolo_slim.tools.sensitivity import map50_metric
        metric = map50_metric(data, img, opts.eval_images, opts.batch_size)
    loop = _Loop(data, out_dir, opts, hooks, metric, model, (img, img),
                 _baseline(out_dir, model, (img, img), metric, log),
                 os.path.splitext(os.path.basename(cfg or weights))[0],
                 {"target_flops": opts.per_round_flops})
    gap = _latency_setup(loop, cfg or weights, target, log)
    rounds, stop, gap = _rounds(loop, cfg, weights, gap, target, log)
    ok = [r for r in rounds if r["drop"] <= opts.max_drop]
    summary = {"baseline": loop.base, "rounds": rounds, "stopped": stop,
               "best_within_drop": ok[-1]["round"] if ok else None}
    if gap is not None:
        summary["target"] = {"flag": target, "value": opts.target_speedup or opts.target_latency,
                             "met": gap["remaining"] <= 1, **gap}
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    if stop:
        log(f"stopped early: {stop}")
    return summary


def _check_options(opts: IterateOptions) -> str | None:
    """The checks of a run started from Python (the flags check the same); returns the
    whole-run target's flag, if any."""
    if opts.rounds < 1 or opts.epochs_per_round < 1 or not 0 < opts.per_round_flops < 1:
        raise YoloSlimError("--rounds and --epochs-per-round must be >= 1, --per-round-flops in (0, 1)")
    if opts.strategy not in STRATEGIES or opts.importance not in IMPORTANCE:
        raise YoloSlimError(f"--strategy {opts.strategy} / --importance {opts.importance} unknown")
    if not 0.0 <= opts.layer_keep <= 1.0 or opts.round_to < 1:
        raise YoloSlimError("--layer-keep must be in [0, 1] and --round-to >= 1")
    if opts.per_round_speedup and not opts.per_round_speedup > 1:
        raise YoloSlimError(f"--per-round-speedup must be > 1 (or 0: off), not {opts.per_round_speedup}")
    return check_targets(opts)


def _claim_folder(out_dir: str, mine: dict[str, Any]) -> None:
    """Write iterate.json, refusing a folder that holds a run with other inputs or options."""
    os.makedirs(out_dir, exist_ok=True)
    saved = _read_json(os.path.join(out_dir, "iterate.json"))
    if saved is not None:  # a run started before an option existed had its default
        saved["options"] = {**asdict(IterateOptions()), **saved.get("options", {})}
    if saved is not None and json.loads(json.dumps(saved)) != json.loads(json.dumps(mine)):
        changed = ", ".join(changed_options(saved, mine)) or "see its iterate.json"
        raise YoloSlimError(f"{out_dir} holds an iterative run with other inputs or options "
                            f"({changed}); resume it with the same ones, or use a new --output-dir")
    _write_json(os.path.join(out_dir, "iterate.json"), mine)


def _baseline(out_dir: str, model: Any, hw: tuple[int, int], metric: Callable[[Any], float],
              log) -> dict[str, Any]:
    """baseline.json: the input model's mAP@0.5 and FLOPs, measured once per run folder."""
    from yolo_slim.analysis.cost import model_flops
    base_path = os.path.join(out_dir, "baseline.json")
    base = _read_json(base_path)
    if base is None:
        base = {"map50": metric(model), "flops": model_flops(model, hw)}
        _write_json(base_path, base)
    log(f"baseline: mAP@0.5 {base['map50']:.4f}, {base['flops']:,} FLOPs")
    return base


def _latency_setup(loop: _Loop, source: str, target: str | None, log) -> dict[str, Any] | None:
    """With a speed-up or latency target: the latency table and the timer for the cuts, and
    (whole-run target) the input model's measured latency gap, kept in baseline.json."""
    opts = loop.opts
    if opts.per_round_speedup or target:
        from yolo_slim.tools.latency import ensure_table, table_measure_hook
        loop.table = opts.latency_table or ensure_table(source, loop.hw, runtime=opts.runtime, log=log)
        loop.cut = {"target_speedup": opts.per_round_speedup, "latency_table": loop.table}
        loop.measure = table_measure_hook(loop.table)  # timed on the table's runtime
    if not target:
        return None
    if "latency" not in loop.base:
        loop.base["latency"] = latency_gap(opts, loop.measure, loop.hw, loop.original)
        _write_json(os.path.join(loop.out_dir, "baseline.json"), loop.base)
    gap = loop.base["latency"]
    log(f"baseline: {gap['ms']:.3f} ms measured; {target} {opts.target_speedup or opts.target_latency}")
    return gap


def _rounds(loop: _Loop, cfg: str | None, weights: str, gap: dict[str, Any] | None,
            target: str | None, log) -> tuple[list[dict[str, Any]], str | None, Any]:
    """Rounds 1..--rounds (a finished one read back from its round.json) until a stop; returns
    the rounds, why the loop stopped early (None: it did not) and the last latency gap."""
    opts, cur_cfg, cur_w = loop.opts, cfg, weights
    rounds: list[dict[str, Any]] = []
    for k in range(1, opts.rounds + 1):
        rd = os.path.join(loop.out_dir, f"round_{k}")
        done = _read_json(os.path.join(rd, "round.json"))
        if gap is not None and gap["remaining"] <= 1:
            return rounds, (f"{target} met by {f'round {k - 1}' if k > 1 else 'the input model'}: "
                            f"{gap['ms']:.3f} ms measured, {gap['speedup']:.3f}x the original"), gap
        if gap is not None:  # what is left of the speed-up, spread evenly over the rounds left
            loop.cut["target_speedup"] = gap["remaining"] ** (1 / (opts.rounds - k + 1))
        if done is None:
            pd = os.path.join(rd, "prune")
            stop = _prune(loop, k, pd, cur_cfg, cur_w)
            if stop:
                return rounds, stop, gap
            done = _tune(loop, k, rd, pd, timed=gap is not None)
        else:
            log(f"round {k}: complete, skipped")
        rounds.append(done)
        log(_round_line(k, done))
        cur_cfg, cur_w, gap = done["cfg"], done["weights"], done.get("latency")
        if done["drop"] > opts.max_drop:
            return rounds, f"round {k}: mAP@0.5 drop {done['drop']:.4f} > --max-drop {opts.max_drop}", gap
    return rounds, None, gap


def _prune(loop: _Loop, k: int, pd: str, cfg: str | None, weights: str) -> str | None:
    """Round k's cut of the current model into `pd` (kept if it has its report); returns why
    the loop stops when the target cannot be reached (any other error is the user's to fix)."""
    from yolo_slim.prune.channels import PruneOptions
    from yolo_slim.prune.pipeline import run_channels as prune_run
    if _read_json(os.path.join(pd, "prune_report.json")) is not None:
        return None
    o = loop.opts
    try:
        prune_run(cfg, weights, pd, PruneOptions(
            strategy=o.strategy, layer_keep=o.layer_keep, round_to=o.round_to, img_size=loop.hw,
            importance=o.importance, rank_data=loop.data, rank_batches=o.rank_batches,
            rank_batch_size=o.batch_size, **loop.cut),
            log=lambda *a: None, measure=loop.measure, latency_table=loop.table)
    except TargetUnreachable as e:
        return f"round {k}: cannot prune further ({e})"
    return None


def _tune(loop: _Loop, k: int, rd: str, pd: str, timed: bool) -> dict[str, Any]:
    """Round k after its cut: score the pruned model, fine-tune it, score (and with `timed`,
    time) the result; round.json, written last, marks the round complete."""
    from yolo_slim.analysis.cost import model_flops
    from yolo_slim.nn.weights import export_run_model, load_model
    p_cfg, p_w = os.path.join(pd, f"{loop.stem}.cfg"), os.path.join(pd, f"{loop.stem}.weights")
    map_pruned = loop.metric(load_model(p_cfg, p_w))
    teacher = loop.original if loop.opts.kd != "none" else None
    td = _finetune(rd, p_cfg, p_w, loop.data, loop.opts, teacher, loop.hooks)
    f_cfg, f_w = export_run_model(td, loop.stem)
    tuned = load_model(f_cfg, f_w)
    m = loop.metric(tuned)
    done = {"round": k, "cfg": f_cfg, "weights": f_w, "map50_pruned": map_pruned,
            "map50": m, "drop": loop.base["map50"] - m,
            "flops_fraction": model_flops(tuned, loop.hw) / loop.base["flops"],
            "params": sum(p.numel() for p in tuned.parameters())}
    if timed:
        done["latency"] = {**latency_gap(loop.opts, loop.measure, loop.hw, loop.original, tuned),
                           "round_speedup": loop.cut["target_speedup"]}
    _write_json(os.path.join(rd, "round.json"), done)
    return done


def _round_line(k: int, done: dict[str, Any]) -> str:
    lat = done.get("latency")
    return (f"round {k}: FLOPs {done['flops_fraction']:.3f} of the original, mAP@0.5 "
            f"{done['map50_pruned']:.4f} pruned -> {done['map50']:.4f} fine-tuned "
            f"(drop {done['drop']:+.4f})" + (f"; asked {lat['round_speedup']:.3f}x: {lat['ms']:.3f} "
                                              f"ms measured, {lat['speedup']:.3f}x the original" if lat else ""))


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    from yolo_slim.core.cli import from_args, parse_given, write_resolved
    a, given = parse_given(parser(), argv)
    if a is None:
        return 0
    opts = from_args(IterateOptions, a, train=parse_train_overrides(a.train))
    check_targets(opts, given)
    s = run(a.cfg, a.weights, a.data, a.output_dir, opts)
    write_resolved(os.path.join(a.output_dir, "args.json"), a)
    print(f"done: {len(s['rounds'])} rounds in {a.output_dir}; best within --max-drop: "
          f"round {s['best_within_drop']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
