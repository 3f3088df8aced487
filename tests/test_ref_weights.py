"""darknet .weights bytes written out literally (issue 28: the header test builds its expected
header with the same `major·10 + minor >= 2` rule the reader uses; these bytes are typed in).

darknet (docs darknet-format.md): int32 major, minor, revision, then `seen` as uint64 when
major·10 + minor >= 2, else uint32; then per conv β, γ, mean, var (or the bias), then the
kernel; little-endian float32.
"""
from __future__ import annotations

import numpy as np
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet
from yolo_slim.nn.weights import darknet_weights_bytes, load_darknet_weights, save_darknet_weights

# one BN conv 1 -> 2 channels, 1x1 (2 weights), then a head conv 2 -> 6 (bias 6 + 12 weights)
CFG = """[net]
width=32
height=32
channels=1
[convolutional]
batch_normalize=1
filters=2
size=1
activation=leaky
[convolutional]
filters=6
size=1
activation=linear
[yolo]
mask=0
anchors=4,4
classes=1
"""
N_FLOATS = 4 * 2 + 2 + 6 + 12  # 28


def model() -> Darknet:
    torch.manual_seed(0)
    m = Darknet(parse_cfg_text(CFG))
    with torch.no_grad():
        c0, c1 = m.module_list[0], m.module_list[1]
        c0.bn.bias.copy_(torch.tensor([1.0, 2.0]))
        c0.bn.weight.copy_(torch.tensor([3.0, 4.0]))
        c0.bn.running_mean.copy_(torch.tensor([5.0, 6.0]))
        c0.bn.running_var.copy_(torch.tensor([7.0, 8.0]))
        c0.conv.weight.copy_(torch.tensor([9.0, 10.0]).view(2, 1, 1, 1))
        c1.conv.bias.copy_(torch.arange(11.0, 17.0))
        c1.conv.weight.copy_(torch.arange(17.0, 29.0).view(6, 2, 1, 1))
    return m


def test_written_bytes_literally(tmp_path):
    m = model()
    m.seen = 0x0102030405060708
    path = tmp_path / "m.weights"
    save_darknet_weights(m, str(path))
    data = path.read_bytes()
    assert data[:20] == bytes.fromhex("00000000" "02000000" "05000000" "0807060504030201")
    assert len(data) == 20 + 4 * N_FLOATS
    # β, γ, mean, var, kernel of conv 0; bias, kernel of the head: 1.0 .. 28.0 in that order
    assert data[20:] == np.arange(1.0, 29.0, dtype="<f4").tobytes()
    assert data[20:24] == bytes.fromhex("0000803f")  # 1.0f


def test_header_versions_read_literally(tmp_path):
    body = np.arange(1.0, 29.0, dtype="<f4").tobytes()
    cases = [
        # 0.1.0: 0·10 + 1 < 2: a 4-byte seen (yolov2.weights) -- 12345 = 0x3039
        (bytes.fromhex("00000000" "01000000" "00000000" "39300000"), (0, 1, 0), 12345),
        # 0.2.0 (PJ's): 8-byte seen
        (bytes.fromhex("00000000" "02000000" "00000000" "3930000000000000"), (0, 2, 0), 12345),
        # 1.0.0: 1·10 + 0 >= 2: 8-byte seen, here above 2^32
        (bytes.fromhex("01000000" "00000000" "07000000" "0000000001000000"), (1, 0, 7), 2 ** 32),
    ]
    for k, (head, version, seen) in enumerate(cases):
        path = tmp_path / f"h{k}.weights"
        path.write_bytes(head + body)
        m = model()
        load_darknet_weights(m, str(path))
        assert m.header == version and m.seen == seen, k
        assert m.module_list[0].bn.bias.tolist() == [1.0, 2.0]
        assert m.module_list[1].conv.weight.flatten().tolist() == list(np.arange(17.0, 29.0))
        assert darknet_weights_bytes(m) == head + body  # written back as read
