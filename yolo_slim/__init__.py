"""yolo-slim: slim Darknet-cfg YOLO detectors (sparse training, channel/layer pruning,
distillation, ONNX export)."""

__version__ = "0.1.0"
