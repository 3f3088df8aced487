"""Layer pruning end to end, optionally followed by channel pruning in the same run.

`prune_layers_model` works in memory (tests, benchmark); prune_layers.py runs it through
prune/pipeline.py's `run_layers`: load, remove the blocks (layers.py), verify, then if channel flags were given run channel pruning on the
compact model exactly as prune_channels.py would on the written files, and write `<stem>.cfg`,
`<stem>.weights`, `<stem>.pt`, `prune_report.json`, `layers.png` (+ `channels.png`) into the output
dir, reading the written cfg + weights back to check they reproduce the final model bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from yolo_slim.darknet.cfg import net_size
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.nn.model import Darknet
from yolo_slim.analysis.cost import canvas, count_params, model_flops, put_text, save_png
from yolo_slim.prune.channels import cut_rule
from yolo_slim.prune.layers import (Block, analyze_blocks, block_cuts, block_scores, choose_blocks,
                                   compact_blocks, depth, removed_table, verify_blocks)
from yolo_slim.prune.verify import apply_cut


@dataclass
class LayerPruneResult:
    compact: Darknet
    folded: Darknet
    removed: list[Block]
    index: dict[int, int]          # old layer -> new layer (removed shortcut -> its input x)
    scores: dict[int, float]       # every removable block, keyed by its shortcut layer
    report: dict[str, Any] = field(default_factory=dict)


def prune_layers_model(model: Darknet, shortcuts: int, rank: str = "mean",
                       img_size: tuple[int, int] | None = None, seed: int = 0,
                       check: bool = True) -> LayerPruneResult:
    """Remove the `shortcuts` removable blocks with the smallest conv2 |γ| (model unchanged)."""
    model = model.eval()
    blocks, why = analyze_blocks(model.module_defs)
    scores = block_scores(model, blocks, rank)
    removed = choose_blocks(blocks, scores, shortcuts)
    index: dict[int, int] = {}

    def compact_fn(folded: Darknet) -> Darknet:
        new, idx = compact_blocks(folded, removed)
        index.update(idx)
        return new

    folded, compact = apply_cut(model, block_cuts(model, removed), compact_fn)
    hw = tuple(img_size or net_size(model.module_defs))
    rep: dict[str, Any] = {
        "rank": rank, "shortcuts": shortcuts, "img_size": list(hw),
        "depth": {"before": depth(model), "after": depth(compact)},
        "layers": {"before": len(model.module_list), "after": len(compact.module_list)},
        "removed_blocks": removed_table(removed, scores),
        "removable_scores": scores,
        "not_removable": why,
        "params": {"before": count_params(model), "after": count_params(compact)},
        "flops": {"before": model_flops(model, hw), "after": model_flops(compact, hw)},
        "index_map": index,
    }
    if check:
        rep["verification"] = verify_blocks(model, folded, compact, removed, seed=seed)
    return LayerPruneResult(compact, folded, removed, index, scores, rep)


def ratios_after_removal(ratios: dict[int, float], index: dict[int, int],
                         removed: list[Block]) -> tuple[dict[int, float], list[int]]:
    """--layer-ratios name layers of the *input* cfg (what yolo_slim.tools.sensitivity measured);
    renumber them for the layer-pruned model. Returns (renumbered ratios, layers whose block was
    removed, so their ratio no longer applies)."""
    gone = {j for b in removed for j in b.layers}
    out: dict[int, float] = {}
    dropped = []
    for i, r in sorted(ratios.items()):
        if i in gone:
            dropped.append(i)
        elif i in index:
            out[index[i]] = r
        else:
            raise YoloSlimError(f"--layer-ratios: layer {i} is not a layer of the input cfg")
    return out, dropped


def plot_blocks(scores: dict[int, float], removed: list[Block], path: str, title: str) -> None:
    """One bar per removable block (x: its shortcut layer, height: score); red = removed."""
    import cv2
    gone = {b.shortcut for b in removed}
    keys = sorted(scores)
    n, top = max(1, len(keys)), max(list(scores.values()) + [1e-12])
    bar, H, left, bottom, up = max(6, min(24, 900 // n)), 320, 60, 40, 30
    img = canvas(H, left + bar * n + 20)
    for k, s in enumerate(keys):
        x0, y = left + k * bar, H - bottom - int((H - bottom - up) * scores[s] / top)
        color = (40, 40, 220) if s in gone else (180, 90, 30)
        cv2.rectangle(img, (x0, y), (x0 + bar - 2, H - bottom), color, -1)
        if n <= 30 or k % 2 == 0:
            put_text(img, str(s), (x0, H - bottom + 14), 0.3)
    put_text(img, f"{top:.3g}", (5, up + 5))
    put_text(img, title + "  (red: removed; x: shortcut layer)", (left, 18), 0.45)
    save_png(img, path)


def summary_text(rep: dict[str, Any]) -> str:
    v, p, f = rep["verification"], rep["params"], rep["flops"]
    rm = ", ".join(f"{b['shortcut']} ({b['score']:.3g})" for b in rep["removed_blocks"]) or "none"
    lines = [f"removed {len(rep['removed_blocks'])} blocks, shortcut ({rep['rank']} |gamma|): {rm}",
             f"conv layers {rep['depth']['before']} -> {rep['depth']['after']}; "
             f"params {p['before']:,} -> {p['after']:,}; FLOPs {f['before']:,} -> {f['after']:,} "
             f"at {rep['img_size'][0]}x{rep['img_size'][1]}",
             f"max |delta| compact vs folded: {v['max_abs_vs_folded']:.3g} (outputs up to "
             f"{v['max_abs_output']:.3g}); vs unfolded masked (border effect): "
             f"{v['max_abs_vs_masked_unfolded']:.3g}; reloaded files: {v.get('max_abs_reloaded', 0):.3g}"]
    if "channel_pruning" in rep:
        c, fin = rep["channel_pruning"], rep["final"]
        cv = c["verification"]
        lines.append(f"then channels ({c['strategy']}, {cut_rule(c['threshold'])}): params "
                     f"{fin['params']:,} ({100 * fin['params'] / p['before']:.1f}%), FLOPs "
                     f"{fin['flops']:,} ({100 * fin['flops'] / f['before']:.1f}%); max |delta| vs "
                     f"folded {cv['max_abs_vs_folded']:.3g}, vs masked {cv['max_abs_vs_masked_unfolded']:.3g}")
    if "map" in rep:
        lines.append(f"mAP before {rep['map']['before']}  after {rep['map']['after']}")
    return "\n".join(lines)
