"""Darknet .weights and self-describing .pt checkpoints.

.weights: int32 major, minor, revision; `seen` as int64 when major*10+minor >= 2 (else int32);
then per [convolutional] in cfg order: BN beta, gamma, running_mean, running_var (or the conv
bias without BN), then the kernel [out, in/groups, k, k]. Little-endian float32, no padding.

.pt: {"cfg": cfg text, "model": state_dict, "header": [major, minor, rev], "seen": int, ...}
so a checkpoint alone rebuilds its model; loaded with weights_only=True.
"""
from __future__ import annotations

import io
import math
import os
import re
import warnings
import zipfile
from typing import Any

import numpy as np
import torch

from yolo_slim.darknet.cfg import parse_cfg_text, write_cfg
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
from yolo_slim.nn.model import Darknet, conv_layers


def _conv_tensors(model: Darknet) -> list[torch.Tensor]:
    """Every tensor the weights file holds, in file order."""
    return [t for _, m in conv_layers(model) for t in _layer_tensors(m)]


_TENSOR_NAMES = {5: ("BN beta", "BN gamma", "BN running_mean", "BN running_var", "kernel"),
                 2: ("bias", "kernel")}


def check_finite(model: Darknet, path: str, layers: list[int] | None = None,
                 verdict: str = "the weights are broken") -> None:
    """Weights loaded or about to be saved must be finite: a NaN or inf names its conv layer,
    cfg line and tensor (a NaN would otherwise slip through max() in every later check)."""
    for i, m in conv_layers(model):
        if layers is not None and i not in layers:
            continue
        ts = _layer_tensors(m)
        for name, t in zip(_TENSOR_NAMES[len(ts)], ts):
            # fast path: a NaN or inf makes the sum non-finite (a finite sum proves nothing is
            # bad; an overflowing one falls through to the exact count below)
            if math.isfinite(float(t.detach().sum(dtype=torch.float64))):
                continue
            bad = ~torch.isfinite(t.detach())
            if bad.any():
                n_nan = int(torch.isnan(t.detach()).sum())
                n_inf = int(bad.sum()) - n_nan
                what = " and ".join([f"{n_nan} NaN"] * bool(n_nan) + [f"{n_inf} inf"] * bool(n_inf))
                d = model.module_defs[i + 1] if i + 1 < len(model.module_defs) else {}
                line = f" (cfg line {d['_line']})" if d.get("_line") else ""
                raise YoloSlimError(f"{path}: conv layer {i}{line}: {name} holds {what} "
                                    f"of {t.numel()} values; {verdict}")


def weights_float_count(model: Darknet) -> int:
    return sum(t.numel() for t in _conv_tensors(model))


def _header_size(major: int, minor: int) -> int:
    return 20 if major * 10 + minor >= 2 else 16


def _read_weights_file(path: str) -> tuple[bytearray, tuple[int, int, int], int, int]:
    """(file bytes, (major, minor, revision), seen, header size) of a darknet .weights file."""
    if not os.path.isfile(path):
        raise YoloSlimError(f"weights not found: {path}")
    with open(path, "rb") as f:
        # a writable buffer lets torch view the floats without another full copy of the file
        data = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(data)
    if len(data) < 16:
        raise YoloSlimError(f"{path}: {len(data)} bytes is too short for a darknet weights header")
    major, minor, rev = (int(v) for v in np.frombuffer(data, "<i4", 3))
    hsize = _header_size(major, minor)
    if len(data) < hsize:
        raise YoloSlimError(f"{path}: {len(data)} bytes is too short for a version "
                            f"{major}.{minor} darknet weights header ({hsize} bytes)")
    seen = int(np.frombuffer(data, "<i8" if hsize == 20 else "<i4", 1, offset=12)[0])
    return data, (major, minor, rev), seen, hsize


def load_darknet_weights(model: Darknet, path: str) -> None:
    """Fill `model` from a darknet .weights file; the size must match the cfg exactly."""
    data, (major, minor, rev), seen, hsize = _read_weights_file(path)
    body = len(data) - hsize
    need = weights_float_count(model)
    if body % 4 or body // 4 != need:
        if body % 4:
            raise YoloSlimError(f"{path}: holds {body / 4:.2f} floats (not a whole number) but "
                                f"the cfg needs {need} ({body / 4 - need:+.2f} floats)")
        diff = body // 4 - need
        more = f"{abs(diff)} floats {'too many' if diff > 0 else 'too few'}"
        # darknet would read the prefix silently: the head of another model's file
        hint = "; a prefix (darknet53.conv.74) is read by train_sparse.py --transfer" * (diff > 0)
        raise YoloSlimError(f"{path}: holds {body // 4} floats but the cfg needs {need} ({more}); "
                            f"wrong cfg for these weights?{hint}")
    floats = np.frombuffer(data, "<f4", need, offset=hsize)
    pos = 0
    with torch.no_grad():
        for t in _conv_tensors(model):
            n = t.numel()
            t.copy_(torch.from_numpy(floats[pos:pos + n]).view_as(t))
            pos += n
    check_finite(model, path)
    model.header, model.seen = (major, minor, rev), seen


def darknet_weights_bytes(model: Darknet) -> bytes:
    major, minor, rev = model.header
    buf = io.BytesIO()
    buf.write(np.array([major, minor, rev], "<i4").tobytes())
    buf.write(np.array([model.seen], "<i8" if _header_size(major, minor) == 20 else "<i4").tobytes())
    for t in _conv_tensors(model):
        buf.write(t.detach().cpu().float().numpy().astype("<f4").tobytes())
    return buf.getvalue()


def save_darknet_weights(model: Darknet, path: str) -> None:
    check_finite(model, path, verdict=NOT_WRITTEN)
    atomic_write_bytes(path, darknet_weights_bytes(model))


NOT_WRITTEN = "not written (a file with a NaN or inf is never saved)"


def _check_tensors(obj: Any, path: str, where: str) -> None:
    """Every float tensor in obj (nested dicts and lists: train_model, optimizer state) finite:
    one float64 sum each is exact (float32 values cannot overflow it); counts for the bad one."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_tensors(v, path, f"{where}: {k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            _check_tensors(v, path, f"{where}[{k}]")
    elif torch.is_tensor(obj) and obj.is_floating_point() and \
            not math.isfinite(float(obj.detach().sum(dtype=torch.float64))):
        n_nan, n_bad = int(torch.isnan(obj).sum()), int((~torch.isfinite(obj)).sum())
        bad = " and ".join([f"{n_nan} NaN"] * bool(n_nan) + [f"{n_bad - n_nan} inf"] * bool(n_bad - n_nan))
        raise YoloSlimError(f"{path}: {where} holds {bad} of {obj.numel()} values; {NOT_WRITTEN}")


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU in the standard layout (training runs channels-last)."""
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format)
            for k, v in model.state_dict().items()}


def save_checkpoint(model: Darknet, path: str, **extra: Any) -> None:
    """Write a self-describing .pt (cfg text + state dict + header/seen + anything extra)."""
    model = getattr(model, "module", model)  # unwrap DDP
    check_finite(model, path, verdict=NOT_WRITTEN)
    # a training checkpoint's raw weights and optimizer state (hook states may use inf freely)
    _check_tensors({k: extra[k] for k in ("train_model", "optimizer") if k in extra}, path, "")
    ckpt = {"cfg": write_cfg(model.module_defs),
            "model": state_tensors(model),
            "header": list(model.header), "seen": int(model.seen), **extra}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: str) -> dict[str, Any]:
    """A .pt as a dict, read with torch.load(weights_only=True): another tool's pickled model
    (classes, functions) is refused without running any of it. A .pt is a zip whose members
    carry CRCs, which torch does not check: a damaged copy would load wrong tensors silently."""
    if not os.path.isfile(path):
        raise YoloSlimError(f"checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad:
                raise YoloSlimError(f"{path}: not a readable checkpoint: {bad} fails its CRC "
                                    "check (a damaged or partial copy)")
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except YoloSlimError:
        raise
    except Exception as e:  # torch and zipfile raise many types for a corrupt or foreign file
        if "Weights only load failed" in str(e):
            g = re.search(r"GLOBAL ([\w.]+)|Unsupported operand \d+", str(e))
            raise YoloSlimError(f"{path}: not a readable checkpoint: refused, it pickles Python "
                                f"objects{f' ({g[0]})' if g else ''} whose loading would run code; "
                                "only tensors and plain data are read (weights_only)") from None
        raise YoloSlimError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise YoloSlimError(f"{path}: not a yolo-slim checkpoint (no 'model' entry)")
    return ckpt


def load_checkpoint_into(model: Darknet, ckpt: dict[str, Any], path: str = "<ckpt>") -> None:
    sd = ckpt["model"]
    mine = model.state_dict()
    bad = [k for k in mine if k not in sd or sd[k].shape != mine[k].shape]
    if bad or len(sd) != len(mine):
        k = bad[0] if bad else next(k for k in sd if k not in mine)
        raise YoloSlimError(f"{path}: checkpoint does not match the cfg (first mismatch: {k})")
    model.load_state_dict(sd)
    check_finite(model, path)
    model.header = tuple(ckpt.get("header", (0, 2, 5)))
    model.seen = int(ckpt.get("seen", 0))


def model_from_checkpoint(path: str) -> Darknet:
    """Rebuild a model from a .pt alone (its cfg is inside)."""
    ckpt = read_checkpoint(path)
    if "cfg" not in ckpt:
        raise YoloSlimError(f"{path}: checkpoint has no cfg; pass --cfg")
    model = Darknet(parse_cfg_text(ckpt["cfg"], path=f"{path}[cfg]"))
    load_checkpoint_into(model, ckpt, path)
    return model


def load_weights(model: Darknet, path: str) -> None:
    """Load .weights or .pt into a model built from the user's cfg."""
    if path.endswith(".pt") or path.endswith(".pth"):
        load_checkpoint_into(model, read_checkpoint(path), path)
    else:
        load_darknet_weights(model, path)


def _layer_tensors(m) -> list[torch.Tensor]:
    """One conv layer's tensors in .weights order (BN β, γ, mean, var, or the bias; kernel)."""
    if m.bn is not None:
        return [m.bn.bias, m.bn.weight, m.bn.running_mean, m.bn.running_var, m.conv.weight]
    return [m.conv.bias, m.conv.weight]


def load_transfer(model: Darknet, path: str, source_cfg: str | None = None) -> dict[str, Any]:
    """Start training from weights made for another cfg: copy what fits, keep the rest as built.

    - a .pt (its cfg is inside), or a .weights with `source_cfg` (the cfg it was written for,
      e.g. yolov3.cfg for COCO's yolov3.weights, loaded exactly first): every conv layer whose
      index, kernel shape and BN-or-bias match is copied; the others (typically the heads of a
      different class count) keep their initialisation;
    - a .weights without `source_cfg` is read as a prefix, as darknet reads darknet53.conv.74:
      conv layers in order while the file holds floats; a file ending inside a layer is an error.
    Returns {"loaded": [layer indices], "kept_init": [layer indices], "mode": "match" | "prefix"}.
    """
    convs = conv_layers(model)
    if path.endswith((".pt", ".pth")) or source_cfg:
        src = model_from_checkpoint(path) if not source_cfg else load_model(source_cfg, path)
        theirs = dict(conv_layers(src))
        loaded = []
        with torch.no_grad():
            for i, m in convs:
                o = theirs.get(i)
                mine_t = _layer_tensors(m)
                if o is None or [t.shape for t in _layer_tensors(o)] != [t.shape for t in mine_t]:
                    continue
                for a, b in zip(mine_t, _layer_tensors(o)):
                    a.copy_(b)
                loaded.append(i)
        mode = "match"
    else:
        data, _, _, hsize = _read_weights_file(path)
        if (len(data) - hsize) % 4:
            raise YoloSlimError(f"{path}: holds {(len(data) - hsize) / 4:.2f} floats, not a whole "
                                "number: not a darknet weights file")
        floats = np.frombuffer(data, "<f4", offset=hsize)
        pos, loaded = 0, []
        with torch.no_grad():
            for i, m in convs:
                ts = _layer_tensors(m)
                n = sum(t.numel() for t in ts)
                if pos == len(floats):
                    break
                if pos + n > len(floats):
                    raise YoloSlimError(f"{path}: ends inside conv layer {i} ({len(floats) - pos} of "
                                        f"its {n} floats): not a prefix of this cfg's weights")
                for t in ts:
                    t.copy_(torch.from_numpy(floats[pos:pos + t.numel()]).view_as(t))
                    pos += t.numel()
                loaded.append(i)
        if pos != len(floats):
            raise YoloSlimError(f"{path}: {len(floats) - pos} floats left after the cfg's last conv "
                                "layer; for weights of another cfg give --weights-cfg")
        mode = "prefix"
    if not loaded:
        raise YoloSlimError(f"{path}: no conv layer matches the cfg; nothing to transfer")
    check_finite(model, path, loaded)
    done = set(loaded)
    return {"loaded": loaded, "kept_init": [i for i, _ in convs if i not in done], "mode": mode}


def load_model(cfg: str | None, weights: str | None) -> Darknet:
    """The usual --cfg/--weights pair: cfg may be omitted for a .pt that carries its own."""
    from yolo_slim.nn.model import build_model
    if cfg is None:
        if not weights or not weights.endswith(".pt"):
            raise YoloSlimError("--cfg is required unless --weights is a yolo-slim .pt checkpoint")
        return model_from_checkpoint(weights)
    model = build_model(cfg)
    if weights:
        load_weights(model, weights)
    return model


def export_run_model(run_dir: str, stem: str) -> tuple[str, str]:
    """Write a training run's best.pt (else last.pt) as <stem>.cfg + <stem>.weights in run_dir,
    the plain darknet pair the next stage (prune, export, darknet itself) reads."""
    from yolo_slim.darknet.cfg import save_cfg
    src = os.path.join(run_dir, "best.pt")
    if not os.path.isfile(src):
        src = os.path.join(run_dir, "last.pt")
    model = model_from_checkpoint(src)
    cfg_path, w_path = os.path.join(run_dir, f"{stem}.cfg"), os.path.join(run_dir, f"{stem}.weights")
    save_cfg(model.module_defs, cfg_path)
    save_darknet_weights(model, w_path)
    return cfg_path, w_path
