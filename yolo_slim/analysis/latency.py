"""A latency model of the deployment runtime: per conv, latency as a function of its kept input
and output channel counts, measured (not derived from FLOPs).

FLOPs are a poor proxy for speed: a 1×1 conv on a 13×13 map costs little arithmetic but a fixed
launch and memory cost, a conv on a 208×208 map is bound by memory traffic, and a channel count
off the runtime's vector block (8 floats for AVX2, 16 for AVX-512) can make a conv *slower*
with fewer channels. So every conv of the cfg is timed on its own, as a one-conv graph (conv +
bias + activation: BN is folded at export) at the deployment input size and batch, on a grid of
(input, output) channel counts; between grid points the latency is bilinear.

- Grid: per axis `align` (the smallest block), the fractions 1/steps … 1 of the full count rounded
  up to a multiple of `align`, and the full count. An axis that no pruning can change (a head conv's
  outputs, the network input) is timed at its full count only. Convs of the same geometry, map size
  and full counts share one entry (a residual stage of yolov3 is timed once).
- Alignment: one probe per varying axis times the count one below an aligned grid point. When one
  channel fewer is slower (`penalty` > 1), an unaligned count is predicted as the next aligned
  count times the penalty: the width chooser then sees that alignment pays on that layer.
- Whole model: per-layer graphs miss what lies between convs (routes, upsampling, the YOLO decode,
  layout reorders) and each run's fixed overhead. The empty-graph overhead is subtracted from each
  timing; the full model is timed once and every prediction is Σ convs × full / Σ convs at full
  widths (`calib.scale`: the ops between convs shrink with the channels they carry; an additive
  rest would also carry the load another process put on the one full-model timing). Given a
  second model (`floor`: every conv at about half its channels, timed interleaved with the
  full one), the fit is the line through both points instead: on OpenVINO and ncnn a one-conv
  model pays layout reorders and copies of its input and output maps that a conv inside the
  network does not, so Σ convs over-predicts narrow models (OpenVINO, demo at 256: 3.4 ms
  predicted for a cut measured at 1.4 ms) and the rest comes out negative. Below the floor model
  the prediction goes linearly to 0.

The timer is injected: `timer(spec, cin, cout) -> ms` (onnxruntime's lives in yolo_slim/deploy,
wired by yolo_slim/tools/latency.py). Given its measurements the table is deterministic, so tests
inject a fake timer. The table is JSON: `python -m yolo_slim.analysis.latency TABLE [--plot P]`
prints and plots one; `python -m yolo_slim.tools.latency --cfg …` measures (cached) and prints.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from yolo_slim.analysis.cost import conv_flops_table
from yolo_slim.core.cli import Parser, parse
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main
from yolo_slim.analysis.graph import ChannelGraph, build_graph, prunable_of
from yolo_slim.sections import infer_shapes, section_of
from yolo_slim.sections.base import activation_of
from yolo_slim.sections.convolutional import conv_geometry

# the runtimes a table is measured on and a cut is timed on: deploy/backends.NAMES, named here
# because the prune and train flags sit below deploy/ (tests/test_runtimes.py: the same list)
TABLE_RUNTIMES = ("onnxruntime", "openvino", "ncnn", "onnxruntime-cpu")

Timer = Callable[[dict[str, Any], int, int], float]  # (spec, cin, cout) -> ms


def conv_specs(defs: list[dict[str, Any]], img_hw: tuple[int, int], batch: int = 1) -> dict[int, dict]:
    """Per conv layer: what its one-conv graph needs (geometry, input map, full counts, activation)."""
    shapes = infer_shapes(defs, img_hw)
    out = {}
    for i, d in enumerate(defs[1:]):
        if not section_of(d).has_weights:
            continue
        cin, h, w = shapes.prev(i)
        out[i] = {**conv_geometry(d), "in_hw": [h, w], "cin": cin, "cout": shapes.of(i)[0],
                  "act": activation_of(d, "logistic"), "batch": batch}
    return out


def spec_key(spec: dict[str, Any], counts: bool = True) -> str:
    return ("k{size}s{stride_y}x{stride_x}p{padding}g{groups}d{dilation}_{in_hw[0]}x{in_hw[1]}_"
            + ("{cin}to{cout}_" if counts else "") + "{act}_b{batch}").format(**spec)


def varying_axes(g: ChannelGraph) -> dict[int, tuple[bool, bool]]:
    """Per conv: (input count may change, output count may change) under the most permissive
    strategy (slim): some of its channels belong to a class that has a decider and no reason to stay."""
    cut = np.zeros(len(g.root), bool)
    for i in prunable_of(g, "slim"):
        cut[g.root[g.conv_nodes[i]]] = True
    ok = cut[g.root] & ~g.class_must_keep()
    return {i: (bool(ok[g.in_nodes(i)].any()), bool(ok[n].any())) for i, n in g.conv_nodes.items()}


def grid_points(full: int, steps: int, align: int, vary: bool, narrow: bool = False) -> list[int]:
    """The counts an axis is timed at: the block and its multiples up to `full`; with `narrow`
    (the runtime packs fewer channels than its block: ncnn, whose first yolov3-tiny conv takes
    8.6 of 20 ms at 16 outputs) a quarter of the block too. Blocked layouts (onnxruntime's
    NCHWc, oneDNN) pad a narrow map inside the network though a one-conv model at 4 channels
    times faster: that point misled their cuts (yolov3-tiny 2x, onnxruntime: ratio 0.89 -> 0.83)."""
    if not vary or full <= 1:
        return [full]
    low = {min(full, max(1, align // 4))} if narrow else set()
    pts = low | {min(full, align)} | \
        {min(full, align * math.ceil(full * k / steps / align)) for k in range(1, steps + 1)} | {full}
    return sorted(p for p in pts if p >= 1)


@dataclass
class LatencyTable:
    meta: dict[str, Any]                    # cfg, img_size, batch, runtime, threads, machine, ...
    entries: dict[str, dict[str, Any]]      # spec key -> {spec, cin: [...], cout: [...], ms: [[...]], penalty}
    layers: dict[int, str]                  # conv layer -> spec key (the cfg it was measured on)
    full_ms: float = math.nan               # the whole model, measured (nan: not measured)
    calib: dict[str, float] = field(default_factory=lambda: {"rest_ms": 0.0, "scale": 1.0})

    # ---- prediction ------------------------------------------------------------------------------
    def conv_ms(self, key: str, cin: int, cout: int) -> float:
        e = self.entries[key]
        a = int(self.meta.get("align", 8))
        fi, ci = _axis(e["cin"], cin, a, e["penalty"][0])
        fo, co = _axis(e["cout"], cout, a, e["penalty"][1])
        ms = np.asarray(e["ms"], float)
        return float(_bilinear(ms, e["cin"], e["cout"], ci, co)) * fi * fo

    def bind(self, defs: list[dict[str, Any]], img_hw: tuple[int, int] | None = None) -> dict[int, str]:
        """conv layer of `defs` -> its entry: the one of the same geometry, map size and full
        counts (a cfg with residual blocks removed finds its convs), else, for a compact cfg, the
        smallest entry of that geometry and map that holds its counts; an error names a conv
        with neither."""
        hw = tuple(img_hw or self.meta["img_size"])
        if list(hw) != list(self.meta["img_size"]):
            raise YoloSlimError(f"latency table measured at {self.meta['img_size']}, asked for {list(hw)}")
        out = {}
        for i, s in conv_specs(defs, hw, self.meta["batch"]).items():
            k = spec_key(s)
            if k not in self.entries:
                fit = [(e["spec"]["cin"] * e["spec"]["cout"], c) for c, e in self.entries.items()
                       if spec_key(e["spec"], False) == spec_key(s, False)
                       and e["spec"]["cin"] >= s["cin"] and e["spec"]["cout"] >= s["cout"]]
                if not fit:
                    raise YoloSlimError(f"latency table has no entry for conv {i} ({k}): measure a "
                                        "table for this cfg")
                k = min(fit)[1]
            out[i] = k
        return out

    def total(self, conv_ms_sum: float) -> float:
        c = self.calib
        lo = c.get("floor_sum_ms", 0.0)
        if lo and conv_ms_sum < lo:  # below the second point: through 0, never negative
            return conv_ms_sum * (lo * c["scale"] + c["rest_ms"]) / lo
        return conv_ms_sum * c["scale"] + c["rest_ms"]

    def predict(self, defs: list[dict[str, Any]], cin: dict[int, int] | None = None,
                cout: dict[int, int] | None = None) -> dict[str, Any]:
        """{total_ms, layers: {conv: ms}} of `defs` at its own channel counts (or overridden)."""
        specs = conv_specs(defs, tuple(self.meta["img_size"]), self.meta["batch"])
        keys = self.bind(defs)
        ms = {i: self.conv_ms(k, (cin or {}).get(i, specs[i]["cin"]), (cout or {}).get(i, specs[i]["cout"]))
              for i, k in keys.items()}
        return {"total_ms": self.total(sum(ms.values())), "layers": ms}

    # ---- files -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "full_ms": self.full_ms, "calib": self.calib,
                "layers": {str(i): k for i, k in self.layers.items()}, "entries": self.entries}

    def save(self, path: str) -> None:
        atomic_write_bytes(path, json.dumps(self.to_json(), indent=1).encode())

    @staticmethod
    def load(path: str) -> "LatencyTable":
        with open(path, encoding="utf-8-sig") as f:
            try:
                o = json.load(f)
                return LatencyTable(o["meta"], o["entries"], {int(i): k for i, k in o["layers"].items()},
                                    float(o.get("full_ms", math.nan)), o["calib"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise YoloSlimError(f"{path}: not a latency table of python -m yolo_slim.tools.latency "
                                    f"({type(e).__name__}: {e})") from None


def _axis(pts: list[int], c: int, align: int, penalty: float) -> tuple[float, int]:
    """(factor, count to interpolate at): an unaligned count costs its aligned ceiling × penalty."""
    if penalty > 1 and c % align and c < pts[-1] and c not in pts:  # a grid point is measured
        return penalty, min(pts[-1], align * math.ceil(c / align))
    return 1.0, c


def _bilinear(ms: np.ndarray, xs: list[int], ys: list[int], x: float, y: float) -> float:
    rows = np.array([np.interp(y, ys, r) for r in ms]) if len(ys) > 1 else ms[:, 0]
    return float(np.interp(x, xs, rows)) if len(xs) > 1 else float(rows[0])


def measure_table(defs: list[dict[str, Any]], img_hw: tuple[int, int], timer: Timer,
                  batch: int = 1, steps: int = 4, align: int = 8, meta: dict | None = None,
                  overhead_ms: float = 0.0, full_ms: float = math.nan,
                  log: Callable[[str], None] = lambda s: None,
                  floor: tuple[list[dict[str, Any]], float] | None = None,
                  narrow: bool = False) -> LatencyTable:
    """Time every distinct conv of `defs` on its grid (in a fixed order) and build the table.
    `overhead_ms` (an empty graph's run) is subtracted from each timing; `full_ms` (the whole
    model) calibrates what lies between the convs; `floor` (defs of a narrow model, its measured
    ms) makes that calibration a line through two points (module docstring)."""
    g = build_graph(defs)
    specs, vary = conv_specs(defs, img_hw, batch), varying_axes(g)
    entries: dict[str, dict[str, Any]] = {}
    layers = {}

    def t(spec: dict, ci: int, co: int) -> float:
        return max(1e-4, float(timer(spec, ci, co)) - overhead_ms)
    for i, spec in specs.items():
        key = layers[i] = spec_key(spec)
        vin, vout = vary[i]
        if key in entries:  # same geometry, map and counts: may vary where any of them varies
            vin, vout = vin or entries[key]["vary"][0], vout or entries[key]["vary"][1]
            if [vin, vout] == entries[key]["vary"]:
                continue
        gi, go = (grid_points(spec[c], steps, align, v, narrow) for c, v in (("cin", vin), ("cout", vout)))
        if spec["groups"] > 1:  # grouped convs stay whole (analysis/graph.py): full counts only
            gi, go = [spec["cin"]], [spec["cout"]]
        log(f"conv {i}: {key}: {len(gi)}x{len(go)} points")
        ms = [[t(spec, a, b) for b in go] for a in gi]
        pen = [1.0, 1.0]
        for ax, pts in enumerate((gi, go)):
            probe = [p for p in pts if p > align and p % align == 0]
            if len(pts) > 1 and probe:
                p = probe[len(probe) // 2]
                full = [spec["cin"], spec["cout"]]
                at = list(full)
                at[ax] = p
                lo = list(full)
                lo[ax] = p - 1
                r = t(spec, *lo) / t(spec, *at)
                pen[ax] = r if r > 1.05 else 1.0  # within 5%: timing noise, alignment does not pay
        entries[key] = {"spec": spec, "cin": gi, "cout": go, "ms": ms, "penalty": pen,
                        "vary": [vin, vout]}
    table = LatencyTable({**(meta or {}), "img_size": list(img_hw), "batch": batch, "steps": steps,
                          "align": align, "narrow": narrow, "overhead_ms": overhead_ms}, entries, layers,
                         full_ms)
    if math.isfinite(full_ms):  # what lies between the convs scales with them (concat, upsample,
        s = sum(table.predict(defs)["layers"].values())  # reorders): a factor, not an offset
        table.calib = {"rest_ms": 0.0, "scale": full_ms / s, "conv_sum_ms": s}
        if floor is not None:
            table.calib.update(two_point(s, full_ms, sum(table.predict(floor[0])["layers"].values()),
                                         floor[1]))
    return table


def two_point(s_full: float, full_ms: float, s_floor: float, floor_ms: float) -> dict[str, float]:
    """The line through (Σ convs, measured) of the full and the floor model; {} (keep the factor)
    when the two points cannot define a rising line (equal sums, or the floor not faster)."""
    if not (s_full - s_floor > 1e-9 and 0 < floor_ms < full_ms):
        return {}
    scale = (full_ms - floor_ms) / (s_full - s_floor)
    return {"scale": scale, "rest_ms": full_ms - scale * s_full, "floor_sum_ms": s_floor,
            "floor_ms": floor_ms}


# ---- text and picture ----------------------------------------------------------------------

def table_text(table: LatencyTable) -> str:
    m = table.meta
    lines = [f"latency table: {m.get('cfg', '?')} at {m['img_size'][0]}x{m['img_size'][1]}, "
             f"batch {m['batch']}, {m.get('runtime', '?')}, {m.get('threads', '?')} threads, "
             f"{m.get('machine', '?')}",
             f"whole model {table.full_ms:.2f} ms measured; rest {table.calib['rest_ms']:.2f} ms, "
             f"scale {table.calib['scale']:.3f}",
             "layer  in->out        ms full  ms half-out  penalty(in,out)  key"]
    for i, k in sorted(table.layers.items()):
        e = table.entries[k]
        s = e["spec"]
        half = table.conv_ms(k, s["cin"], max(1, s["cout"] // 2)) if e["vary"][1] else math.nan
        lines.append(f"{i:5d}  {s['cin']:4d}->{s['cout']:<5d}  {table.conv_ms(k, s['cin'], s['cout']):8.3f}"
                     f"  {half:9.3f}   {e['penalty'][0]:.2f},{e['penalty'][1]:.2f}       {k}")
    return "\n".join(lines)


def plot_latency_flops(defs: list[dict[str, Any]], table: LatencyTable, path: str,
                       after_defs: list[dict[str, Any]] | None = None, title: str = "") -> None:
    """Per conv: share of the FLOPs (grey) next to share of the predicted latency (blue); with
    `after_defs` (same layer count: a channel-pruned cfg) the kept FLOPs and latency as darker bars."""
    import cv2

    from yolo_slim.core.draw import canvas, put_text, save_png
    hw = tuple(table.meta["img_size"])
    fl, ms = conv_flops_table(defs, hw), table.predict(defs)["layers"]
    rows = [(fl, ms)]
    if after_defs is not None:
        rows.append((conv_flops_table(after_defs, hw), table.predict(after_defs)["layers"]))
    layers = sorted(fl)
    ftot, mtot = sum(fl.values()), sum(ms.values())
    vmax = max(max(f / ftot for f in fl.values()), max(m / mtot for m in ms.values()))
    n = len(layers)
    bar = max(4, min(28, 1100 // max(1, n)))
    W, H, left, bottom, top = max(700, 70 + bar * n + 20), 380, 60, 40, 34
    img = canvas(H, W)
    ph = H - bottom - top
    colors = [((200, 200, 200), (230, 170, 110)), ((90, 90, 90), (180, 90, 30))]
    for k, i in enumerate(layers):
        x0 = left + k * bar
        for r, (f, m) in enumerate(rows):
            for j, v in enumerate((f[i] / ftot, m[i] / mtot)):
                w = (bar - 2) // 2
                y = H - bottom - int(ph * v / vmax)
                cv2.rectangle(img, (x0 + j * w, y), (x0 + j * w + w - 1, H - bottom), colors[r][j], -1)
        if n <= 40 or k % max(1, n // 20) == 0:
            put_text(img, str(i), (x0, H - bottom + 14), 0.3)
    put_text(img, f"{100 * vmax:.0f}%", (5, top + 5))
    put_text(img, (title or "per conv") + ": share of FLOPs (grey) vs share of latency (blue)"
             + ("; dark: after" if after_defs is not None else ""), (left, 18), 0.42)
    save_png(img, path)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """python -m yolo_slim.analysis.latency TABLE.json [--plot P.png --cfg CFG]."""
    from yolo_slim.darknet.cfg import parse_cfg
    p = Parser(prog="python -m yolo_slim.analysis.latency",
               description="Print (and plot) a measured latency table (measure one with "
                           "python -m yolo_slim.tools.latency).")
    p.add_argument("table")
    p.add_argument("--plot")
    p.add_argument("--cfg", help="cfg to plot (default: the table's)")
    a = parse(p, argv)
    if a is None:  # --help
        return 0
    t = LatencyTable.load(a.table)
    print(table_text(t))
    if a.plot:
        plot_latency_flops(parse_cfg(a.cfg or t.meta["cfg"]), t, a.plot, title=t.meta.get("cfg", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
