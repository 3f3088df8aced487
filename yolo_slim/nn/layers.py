"""The torch modules behind each darknet section type, as darknet computes them."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (module factory, plain function). The function form is what β-folding uses to
# compute the constant act(β) that a pruned channel emits.
ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Tensor], torch.Tensor]]] = {
    "leaky": (lambda: nn.LeakyReLU(0.1), lambda t: F.leaky_relu(t, 0.1)),
    "linear": (nn.Identity, lambda t: t),
    "mish": (nn.Mish, F.mish),
    "swish": (nn.SiLU, F.silu),
    "relu": (nn.ReLU, F.relu),
    "logistic": (nn.Sigmoid, torch.sigmoid),
    "tanh": (nn.Tanh, torch.tanh),
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return ACTIVATIONS[name][1]


class ConvBlock(nn.Module):
    """[convolutional]: conv -> BN (eps 1e-5, darknet's) or bias -> activation."""

    def __init__(self, in_ch: int, filters: int, size: int, stride: tuple[int, int], padding: int,
                 groups: int, dilation: int, bn: bool, activation: str):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, filters, size, stride=stride, padding=padding * dilation,
                              dilation=dilation, groups=groups, bias=not bn)
        # momentum 0.03 ~ darknet's slow rolling-average; eps is darknet's 1e-5
        self.bn = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.03) if bn else None
        self.activation = activation
        self.act = ACTIVATIONS[activation][0]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MaxPool(nn.Module):
    """[maxpool] with darknet's padding: total `padding` (default size-1), left/top gets
    padding//2, right/bottom the rest, padded positions count as -inf."""

    def __init__(self, size: int, stride: tuple[int, int], padding: int):
        super().__init__()
        self.size, self.stride = size, stride
        lo = padding // 2
        self.pad = (lo, padding - lo, lo, padding - lo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class Upsample(nn.Module):
    """[upsample]: nearest neighbour x stride, times scale."""

    def __init__(self, stride: int, scale: float):
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=float(self.stride), mode="nearest")
        return x * self.scale if self.scale != 1.0 else x


class Route(nn.Module):
    """[route]: concatenate channel slices [gid*C/groups, (gid+1)*C/groups) of its inputs."""

    def __init__(self, layers: list[int], groups: int, group_id: int):
        super().__init__()
        self.layers, self.groups, self.group_id = layers, groups, group_id

    def forward(self, outputs: list[torch.Tensor | None]) -> torch.Tensor:
        xs = [outputs[i] for i in self.layers]
        if self.groups > 1:
            xs = [x.chunk(self.groups, dim=1)[self.group_id] for x in xs]
        return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


class Shortcut(nn.Module):
    """[shortcut]: previous output + the `from` outputs, then the activation."""

    def __init__(self, sources: list[int], activation: str):
        super().__init__()
        self.sources, self.activation = sources, activation
        self.act = ACTIVATIONS[activation][0]()

    def forward(self, x: torch.Tensor, outputs: list[torch.Tensor | None]) -> torch.Tensor:
        for i in self.sources:
            x = x + outputs[i]
        return self.act(x)


class YOLOLayer(nn.Module):
    """[yolo]: reshapes the head map to [B, na, ny, nx, 5+nc] (training) and decodes it to boxes
    in input pixels (inference). The stride is input size / feature-map size, per axis."""

    def __init__(self, anchors: list[tuple[float, float]], nc: int, scale_x_y: float,
                 new_coords: bool):
        super().__init__()
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(-1, 2))
        self.na, self.nc, self.no = len(anchors), nc, nc + 5
        self.scale_x_y, self.new_coords = scale_x_y, new_coords

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ny, nx = x.shape[-2:]
        # view(-1, ...) keeps the batch dimension dynamic in an ONNX trace
        return x.view(-1, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, p: torch.Tensor, img_hw: tuple[int, int]) -> torch.Tensor:
        """raw [B, na, ny, nx, no] -> [B, na*ny*nx, no]: x, y, w, h (pixels), obj, classes."""
        p = p.float()  # decode in fp32 so exp() cannot overflow under AMP
        ny, nx = p.shape[2:4]
        stride_y, stride_x = img_hw[0] / ny, img_hw[1] / nx
        gy, gx = torch.meshgrid(torch.arange(ny, device=p.device, dtype=p.dtype),
                                torch.arange(nx, device=p.device, dtype=p.dtype), indexing="ij")
        anchors = self.anchors.to(p.dtype).view(1, self.na, 1, 1, 2)
        s = self.scale_x_y
        if self.new_coords:  # the conv before already applied logistic
            xy, wh, conf = p[..., :2], p[..., 2:4].square() * 4 * anchors, p[..., 4:]
        else:
            xy, wh, conf = p[..., :2].sigmoid(), p[..., 2:4].exp() * anchors, p[..., 4:].sigmoid()
        if s != 1.0:
            xy = xy * s - 0.5 * (s - 1)
        x = (xy[..., 0] + gx) * stride_x
        y = (xy[..., 1] + gy) * stride_y
        out = torch.cat([x.unsqueeze(-1), y.unsqueeze(-1), wh, conf], -1)
        return out.view(p.shape[0], -1, self.no)
