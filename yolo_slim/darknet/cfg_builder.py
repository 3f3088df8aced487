"""Writing darknet cfgs as code: `CfgBuilder` appends sections the way darknet's cfgs spell
them (values as strings, references relative or absolute as darknet reads them); `_net` is the
[net] section darknet's own cfgs carry (training hyper-parameters the model ignores)."""
from __future__ import annotations

from typing import Any, Sequence

Defs = list[dict[str, Any]]


def _net(width: int, height: int, **extra: Any) -> dict[str, str]:
    """[net] training hyper-parameters as darknet's cfgs set them (the model ignores them)."""
    net = dict(batch=64, subdivisions=8, width=width, height=height, channels=3, momentum=0.9,
               decay=0.0005, angle=0, saturation=1.5, exposure=1.5, hue=0.1, learning_rate=0.001,
               burn_in=1000, max_batches=500200, policy="steps", steps="400000,450000",
               scales=".1,.1")
    net.update(extra)
    return {k: str(v) for k, v in net.items()}


class CfgBuilder:
    """Appends darknet sections; each method returns the new layer's index (0 = first after
    [net]). References follow darknet: negative = relative, non-negative = absolute."""

    def __init__(self, net: dict[str, str]):
        self.defs: Defs = [{"type": "net", **net}]

    @property
    def n(self) -> int:
        """Index the next layer will get."""
        return len(self.defs) - 1

    def rel(self, j: int) -> int:
        """Relative reference from the next layer to layer j."""
        return j - self.n

    def _add(self, type_: str, **kv: Any) -> int:
        self.defs.append({"type": type_, **{k: str(v) for k, v in kv.items() if v is not None}})
        return self.n - 1

    def conv(self, filters: int, size: int, stride: int = 1, act: str = "leaky",
             bn: bool = True) -> int:
        kv = {"batch_normalize": 1} if bn else {}
        return self._add("convolutional", **kv, filters=filters, size=size, stride=stride, pad=1,
                         activation=act)

    def shortcut(self, frm: int = -3, act: str = "linear") -> int:
        return self._add("shortcut", **{"from": frm}, activation=act)

    def route(self, *layers: int, groups: int | None = None, group_id: int | None = None) -> int:
        return self._add("route", layers=",".join(map(str, layers)), groups=groups,
                         group_id=group_id)

    def maxpool(self, size: int, stride: int) -> int:
        return self._add("maxpool", size=size, stride=stride)

    def upsample(self, stride: int = 2) -> int:
        return self._add("upsample", stride=stride)

    def head(self, mask: Sequence[int], anchors: str, classes: int, **yolo_keys: Any) -> int:
        """The 1x1 linear conv that makes len(mask)*(5+classes) maps, then its [yolo]."""
        self.conv(len(mask) * (classes + 5), 1, act="linear", bn=False)
        return self._add("yolo", mask=",".join(map(str, mask)), anchors=anchors, classes=classes,
                         num=len(anchors.split(",")) // 2, **yolo_keys)

    def spp(self) -> int:
        """Spatial pyramid pooling: maxpools 5/9/13 (stride 1, size kept) concatenated with
        their input, largest first."""
        self.maxpool(5, 1)
        self.route(-2)
        self.maxpool(9, 1)
        self.route(-4)
        self.maxpool(13, 1)
        return self.route(-1, -3, -5, -6)
