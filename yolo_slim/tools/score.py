"""evaluate.py's work: score a torch model (.weights/.pt) or an exported file (.onnx, .xml,
.param: run by its runtime) on a .data split, against its labels or, with a reference model,
against that model's detections (agreement). The script parses flags; this decides what runs."""
from __future__ import annotations

import argparse
from typing import Any

from yolo_slim.core.errors import YoloSlimError


def load_reference(args: argparse.Namespace, nc: int, device: Any = "cpu"):
    """The --reference model, or None; its classes must be the scored model's."""
    if not args.reference:
        if args.reference_cfg:
            raise YoloSlimError("--reference-cfg needs --reference")
        return None
    from yolo_slim.nn.weights import load_model
    ref = load_model(args.reference_cfg or None, args.reference).to(device).eval()
    if ref.num_classes != nc:
        raise YoloSlimError(f"--reference {args.reference} has {ref.num_classes} classes, "
                            f"the model {nc}")
    return ref


def score(args: argparse.Namespace) -> dict[str, Any]:
    """Metrics of evaluate.py's flags (see its --help)."""
    from yolo_slim.data.dataset import parse_data_file
    data = parse_data_file(args.data)
    if args.onnx:
        from yolo_slim.deploy.onnx_eval import evaluate_onnx
        if args.rect or args.half:
            raise YoloSlimError("--rect and --half do not apply to --onnx (fixed input, CPU runtime)")
        return evaluate_onnx(args.onnx, args.data, args.split, args.batch_size, args.conf_thres,
                             args.iou_thres, args.max_det, args.workers, args.cfg, args.img_size,
                             preprocess=args.preprocess,
                             reference=load_reference(args, data.classes),
                             reference_conf=args.reference_conf)
    from yolo_slim.core.device import auto_workers, select_device
    from yolo_slim.data.dataset import create_dataloader
    from yolo_slim.eval.evaluate import evaluate
    from yolo_slim.nn.model import check_img_size, largest_stride
    from yolo_slim.nn.weights import load_model
    model = load_model(args.cfg, args.weights)
    img_size = check_img_size(model.module_defs, (args.img_size or 416,) * 2)[0]
    if model.num_classes != data.classes:
        raise YoloSlimError(f"the model has {model.num_classes} classes, {args.data} has {data.classes}")
    device = select_device(args.device)
    ref = load_reference(args, model.num_classes, device)
    loader, _ = create_dataloader(getattr(data, args.split), img_size, args.batch_size,
                                  augment=False, rect=args.rect, workers=auto_workers(device, args.workers),
                                  shuffle=False, nc=data.classes, preprocess=args.preprocess,
                                  stride=largest_stride(model.module_defs))
    return evaluate(model.to(device), loader, args.conf_thres, args.iou_thres, device, args.half,
                    names=data.names, max_det=args.max_det, reference=ref,
                    reference_conf=args.reference_conf)
