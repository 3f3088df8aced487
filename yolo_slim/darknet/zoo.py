"""The standard darknet detectors, generated from their structure instead of copied.

Each model is a few lines of structure (a backbone of repeated stages, a neck, the heads) and
the generator turns it into module_defs (values as strings, exactly what ``parse_cfg`` returns
for the written file). The layer sequence, every conv's shape and every route/shortcut index
come out identical to darknet's own yolov3/yolov3-tiny/yolov3-spp/yolov4/yolov4-tiny.cfg, so
darknet's published .weights load into them (tests/test_zoo.py checks that against the corpus).

    python -m yolo_slim.darknet.zoo --out cfg            # writes cfg/<name>.cfg for every model
    python -m yolo_slim.darknet.zoo --out my --classes 3 yolov4-tiny
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

from yolo_slim.darknet.cfg import write_cfg
from yolo_slim.darknet.cfg_builder import CfgBuilder, Defs, _net
from yolo_slim.core.cli import Parser, number, parse
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main

ANCHORS_V3 = "10,13,16,30,33,23,30,61,62,45,59,119,116,90,156,198,373,326"
ANCHORS_V4 = "12,16,19,36,40,28,36,75,76,55,72,146,142,110,192,243,459,401"
ANCHORS_TINY = "10,14,23,27,37,58,81,82,135,169,344,319"
# demo: objects of ~5%..40% of a 320 px image (16..130 px), three anchors per head
ANCHORS_DEMO = "16,18,28,24,36,44,60,56,84,92,130,124"


# ---- backbones -----------------------------------------------------------------------------

def darknet53(b: CfgBuilder) -> list[int]:
    """Darknet-53: a 3x3 stem, then five stride-2 stages of residual blocks (1x1 c/2, 3x3 c,
    shortcut). Returns the stage outputs at strides 8, 16, 32."""
    b.conv(32, 3)
    taps = []
    for filters, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        b.conv(filters, 3, 2)
        for _ in range(blocks):
            b.conv(filters // 2, 1)
            b.conv(filters, 3)
            b.shortcut(-3)
        taps.append(b.n - 1)
    return taps[2:]


def cspdarknet53(b: CfgBuilder, act: str = "mish") -> list[int]:
    """CSPDarknet-53: each stage splits after its stride-2 conv into a 1x1 bypass and a 1x1 +
    residual-blocks branch, concatenates both and mixes them with a 1x1 transition. The first
    stage keeps full width in its branches (64) with 32-channel bottlenecks."""
    b.conv(32, 3, act=act)
    taps = []
    for filters, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        half = filters if blocks == 1 else filters // 2
        inner = (filters // 2, filters) if blocks == 1 else (half, half)
        b.conv(filters, 3, 2, act=act)
        bypass = b.conv(half, 1, act=act)
        b.route(-2)
        b.conv(half, 1, act=act)
        for _ in range(blocks):
            b.conv(inner[0], 1, act=act)
            b.conv(inner[1], 3, act=act)
            b.shortcut(-3)
        b.conv(half, 1, act=act)
        b.route(-1, b.rel(bypass))
        taps.append(b.conv(filters, 1, act=act))
    return taps[2:]


def tiny_backbone(b: CfgBuilder, widths: Sequence[int], top: int,
                  residual: Sequence[int] = ()) -> int:
    """yolov3-tiny: 3x3 convs each followed by a 2x2 maxpool (stride 2, the last one stride 1,
    which darknet pads right/bottom with -inf), then a 3x3 `top` conv. Stages listed in
    `residual` get a residual block (1x1 half width, 3x3, shortcut) after their conv. Returns
    the stride-16 layer that the fine head concatenates."""
    taps = []
    for k, w in enumerate(widths):
        taps.append(b.conv(w, 3))
        if k in residual:
            b.conv(w // 2, 1)
            b.conv(w, 3)
            taps[-1] = b.shortcut(-3)
        b.maxpool(2, 2 if k < len(widths) - 1 else 1)
    b.conv(top, 3)
    return taps[-2]


def csp_tiny_backbone(b: CfgBuilder) -> int:
    """yolov4-tiny: two stride-2 convs, then three CSP blocks: 3x3 conv, keep its second channel
    half (route groups=2 group_id=1), two 3x3 convs, concat them, 1x1, concat with the block
    input, 2x2 maxpool. Returns the last block's 1x1 (stride 16) for the fine head."""
    b.conv(32, 3, 2)
    b.conv(64, 3, 2)
    tap = -1
    for w in (64, 128, 256):
        b.conv(w, 3)
        b.route(-1, groups=2, group_id=1)
        b.conv(w // 2, 3)
        b.conv(w // 2, 3)
        b.route(-1, -2)
        tap = b.conv(w, 1)
        b.route(-6, -1)
        b.maxpool(2, 2)
    return tap


# ---- whole models ----------------------------------------------------------------------------

V3_YOLO = dict(jitter=".3", ignore_thresh=".7", truth_thresh=1, random=1)
V4_YOLO = dict(jitter=".3", ignore_thresh=".7", truth_thresh=1, iou_thresh=0.213,
               cls_normalizer="1.0", iou_normalizer=0.07, iou_loss="ciou", nms_kind="greedynms",
               beta_nms=0.6, max_delta=5)
TINY4_YOLO = dict(jitter=".3", scale_x_y=1.05, cls_normalizer="1.0", iou_normalizer=0.07,
                  iou_loss="ciou", ignore_thresh=".7", truth_thresh=1, random=0, resize=1.5,
                  nms_kind="greedynms", beta_nms=0.6)


def yolov3(classes: int = 80, spp: bool = False) -> Defs:
    """YOLOv3 (and -spp): Darknet-53, three heads from coarse (stride 32) to fine, each later
    head upsamples the previous head's 5th conv and concatenates a backbone stage."""
    b = CfgBuilder(_net(608 if spp else 416, 608 if spp else 416, batch=1, subdivisions=1))
    c8, c16, c32 = darknet53(b)
    for k, (w, lateral, mask) in enumerate(((512, None, (6, 7, 8)), (256, c16, (3, 4, 5)),
                                            (128, c8, (0, 1, 2)))):
        if lateral is not None:
            b.route(-4)  # back to the previous head's 5th conv, before its 3x3 and [yolo]
            b.conv(w, 1)
            b.upsample(2)
            b.route(-1, lateral)
        b.conv(w, 1)
        b.conv(2 * w, 3)
        b.conv(w, 1)
        if spp and k == 0:
            b.spp()
            b.conv(w, 1)
        b.conv(2 * w, 3)
        b.conv(w, 1)
        b.conv(2 * w, 3)
        b.head(mask, ANCHORS_V3, classes, **V3_YOLO)
    return b.defs


def yolov3_spp(classes: int = 80) -> Defs:
    return yolov3(classes, spp=True)


def yolov3_tiny(classes: int = 80, widths: Sequence[int] = (16, 32, 64, 128, 256, 512),
                top: int = 1024, neck: int = 256, up: int = 128, fine: int = 256,
                anchors: str = ANCHORS_TINY, net: dict[str, str] | None = None,
                residual: Sequence[int] = ()) -> Defs:
    """yolov3-tiny: maxpool backbone, a coarse head (1x1 neck, 3x3) and a fine head that
    upsamples the neck and concatenates the stride-16 conv."""
    b = CfgBuilder(net or _net(416, 416, batch=1, subdivisions=1))
    c16 = tiny_backbone(b, widths, top, residual)
    b.conv(neck, 1)
    b.conv(2 * neck, 3)
    b.head((3, 4, 5), anchors, classes, **V3_YOLO)
    b.route(-4)
    b.conv(up, 1)
    b.upsample(2)
    b.route(-1, c16)
    b.conv(fine, 3)
    b.head((0, 1, 2), anchors, classes, **V3_YOLO)
    return b.defs


def yolov4(classes: int = 80) -> Defs:
    """YOLOv4: CSPDarknet-53 (mish), SPP, then PANet: top-down (upsample + lateral 1x1 of the
    backbone stage) to the stride-8 head, bottom-up (3x3 stride-2 + the top-down map) to the
    stride-16 and stride-32 heads. Neck and heads use leaky."""
    b = CfgBuilder(_net(608, 608, subdivisions=8, momentum=0.949, learning_rate=0.0013,
                        max_batches=500500, mosaic=1))
    c8, c16, _ = cspdarknet53(b)
    b.conv(512, 1)
    b.conv(1024, 3)
    b.conv(512, 1)
    b.spp()
    b.conv(512, 1)
    b.conv(1024, 3)
    p5 = b.conv(512, 1)
    pan = [p5]
    for w, lateral in ((256, c16), (128, c8)):  # top-down
        b.conv(w, 1)
        b.upsample(2)
        b.route(lateral)
        b.conv(w, 1)
        b.route(-1, -3)
        for _ in range(2):
            b.conv(w, 1)
            b.conv(2 * w, 3)
        pan.append(b.conv(w, 1))
    heads = (((0, 1, 2), 1.2, None), ((3, 4, 5), 1.1, pan[1]), ((6, 7, 8), 1.05, pan[0]))
    for k, (mask, sxy, lateral) in enumerate(heads):  # bottom-up, fine to coarse
        w = 128 << k
        if lateral is not None:
            b.route(-4)
            b.conv(w, 3, 2)
            b.route(-1, b.rel(lateral))
            for _ in range(2):
                b.conv(w, 1)
                b.conv(2 * w, 3)
            b.conv(w, 1)
        b.conv(2 * w, 3)
        extra = dict(V4_YOLO, random=1) if k == 2 else V4_YOLO
        b.head(mask, ANCHORS_V4, classes, scale_x_y=sxy, **extra)
    return b.defs


def yolov4_tiny(classes: int = 80) -> Defs:
    """yolov4-tiny: CSP-tiny backbone, yolov3-tiny-like heads; the fine head uses anchors
    1,2,3 (darknet's published mask; anchor 0 is unused)."""
    b = CfgBuilder(_net(416, 416, subdivisions=1, learning_rate=0.00261,
                        max_batches=2000200, steps="1600000,1800000"))
    c16 = csp_tiny_backbone(b)
    b.conv(512, 3)
    b.conv(256, 1)
    b.conv(512, 3)
    b.head((3, 4, 5), ANCHORS_TINY, classes, **TINY4_YOLO)
    b.route(-4)
    b.conv(128, 1)
    b.upsample(2)
    b.route(-1, c16)
    b.conv(256, 3)
    b.head((1, 2, 3), ANCHORS_TINY, classes, **TINY4_YOLO)
    return b.defs


def demo(classes: int = 5) -> Defs:
    """The demo model: yolov3-tiny's layout at about 1/4 of its width (2.4 M parameters),
    5 classes, 320 px, anchors for objects of 16..130 px, plus one residual block in the
    stride-4 and stride-8 stages so that the demo has blocks for layer pruning to remove.
    Trains on 2 CPU cores in minutes."""
    net = _net(320, 320, batch=16, subdivisions=1, burn_in=100, max_batches=4000,
               steps="3200,3600")
    return yolov3_tiny(classes, widths=(16, 32, 64, 128, 256, 256), top=256, neck=128, up=64,
                       fine=128, anchors=ANCHORS_DEMO, net=net, residual=(2, 3))


MODELS: dict[str, Callable[..., Defs]] = {
    "yolov3": yolov3, "yolov3-tiny": yolov3_tiny, "yolov3-spp": yolov3_spp,
    "yolov4": yolov4, "yolov4-tiny": yolov4_tiny, "demo": demo,
}

HEADERS = {
    "yolov3": "YOLOv3 (Redmon & Farhadi, 2018): Darknet-53 backbone, 3 heads at strides 32/16/8.",
    "yolov3-tiny": "YOLOv3-tiny: 6 conv+maxpool stages (last maxpool size=2 stride=1), "
                   "2 heads at strides 32/16.",
    "yolov3-spp": "YOLOv3-SPP: YOLOv3 with spatial pyramid pooling (maxpool 5/9/13) in the "
                  "stride-32 head.",
    "yolov4": "YOLOv4 (Bochkovskiy et al., 2020): CSPDarknet-53 (mish), SPP, PANet neck, "
              "3 heads at strides 8/16/32 with scale_x_y.",
    "yolov4-tiny": "YOLOv4-tiny: CSP-tiny backbone (route groups=2 group_id=1), 2 heads at "
                   "strides 32/16.",
    "demo": "yolo-slim demo model: yolov3-tiny layout at ~1/4 width + 2 residual blocks, 5 classes, 320 px, "
            "anchors for 16..130 px objects.",
}


def build_defs(name: str, classes: int | None = None) -> Defs:
    """module_defs of a zoo model (values are strings, as parse_cfg returns them)."""
    if name not in MODELS:
        raise YoloSlimError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    return MODELS[name]() if classes is None else MODELS[name](classes)


def cfg_text(name: str, classes: int | None = None) -> str:
    """The cfg file: a header comment (darknet skips '#' lines) and the sections."""
    defs = build_defs(name, classes)
    nc = defs[-1]["classes"]
    std = "" if name == "demo" else (f" Same layers and .weights layout as darknet's {name}.cfg, "
                                     f"so darknet's {name}.weights loads into it.")
    lines = [f"# {name}.cfg - {HEADERS[name]}", f"# {nc} classes.{std}",
             "# Generated by `python -m yolo_slim.darknet.zoo` from the structure in yolo_slim/darknet/zoo.py.",
             "", ""]
    return "\n".join(lines) + write_cfg(defs)


def write_zoo(out_dir: str, names: Sequence[str] | None = None,
              classes: int | None = None) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in names or list(MODELS):
        path = os.path.join(out_dir, f"{name}.cfg")
        atomic_write_bytes(path, cfg_text(name, classes).encode())
        paths.append(path)
    return paths


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m yolo_slim.darknet.zoo", description=__doc__)
    p.add_argument("names", nargs="*", help=f"models to write (default all: {', '.join(MODELS)})")
    p.add_argument("--out", default="cfg", help="output directory")
    p.add_argument("--classes", type=number(int, min=1), help="number of classes (default: the model's own)")
    args = parse(p, argv)
    if args is None:  # --help
        return 0
    for path in write_zoo(args.out, args.names or None, args.classes):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
