"""Darknet .cfg text <-> module_defs.

module_defs is a list of dicts, ``[net]`` first. Each dict has ``type`` (the canonical section
name) plus the section's keys with their values as strings, exactly as darknet reads them (all
whitespace removed, see darknet-format.md §1). Keys starting with ``_`` are metadata
(``_line``: the section's line number, ``_path``: the file) and are never written back.

Values stay strings so that ``write_cfg(parse_cfg(x))`` keeps every key, its order and its
value (anchors are never truncated); the typed getters below convert on use and raise a
CfgError naming file and line (``_lines`` maps each key to its own line).

A cfg key that would collide with the metadata (``type``, as in ``[cost] type=sse``, or a key
starting with ``_``) is stored with a leading space (a parsed key can never contain whitespace)
and written back without it, so it is kept but never mistaken for metadata.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any

from yolo_slim.core.errors import CfgError, YoloSlimError

# Darknet accepts these alias spellings; we store the canonical one.
ALIASES = {"network": "net", "conv": "convolutional", "max": "maxpool", "avg": "avgpool",
           "conn": "connected", "soft": "softmax", "deconv": "deconvolutional",
           "normalization": "lrn"}
# Every section type darknet (AlexeyAB) recognises; anything else is a typo or foreign file.
DARKNET_SECTIONS = {
    "net", "convolutional", "deconvolutional", "connected", "maxpool", "local_avgpool", "avgpool",
    "route", "shortcut", "upsample", "yolo", "Gaussian_yolo", "region", "detection", "reorg",
    "reorg3d", "dropout", "softmax", "cost", "crop", "local", "lrn", "batchnorm", "scale_channels",
    "sam", "empty", "silence", "implicit_add", "implicit_mul", "activation", "rnn", "gru", "lstm",
    "crnn", "conv_lstm", "history", "contrastive",
}
# The keys darknet (AlexeyAB parser.c, + pjreddie's) reads per section type we build; any other
# key is one darknet prints as "Unused field" (a typo like strides=2): warn, naming file and line.
_COMMON_KEYS = {"clip", "dontsave", "dontload", "dontloadscales", "learning_rate", "smooth",
                "stopbackward", "train_only_bn", "dont_update", "burnin_update", "onlyforward"}
KNOWN_KEYS: dict[str, set[str]] = {k: _COMMON_KEYS | set(v.split()) for k, v in {
    "net": "batch subdivisions width height channels inputs momentum decay angle saturation "
           "exposure hue learning_rate learning_rate_min burn_in power max_batches policy steps "
           "scales step gamma max_crop min_crop aspect flip blur gaussian_noise mixup cutmix mosaic "
           "mosaic_bound letter_box adam B1 B2 eps time_steps track augment_speed "
           "sequential_subdivisions init_sequential_subdivisions try_fix_nan batches_per_cycle "
           "batches_cycle_mult label_smooth_eps resize_step attention adversarial_lr "
           "max_chart_loss contrastive contrastive_jit_flip contrastive_color unsupervised "
           "seq_scales equidistant_point loss_scale dynamic_minibatch optimized_memory "
           "workspace_size_limit_MB ema_alpha weights_reject_freq badlabels_rejection_percentage "
           "num_sigmas_reject_badlabels show_receptive_field sgdr_cycle sgdr_mult max_epochs seen "
           "use_cuda_graph rotate center",
    "convolutional": "filters groups size stride stride_x stride_y dilation antialiasing pad "
                     "padding activation assisted_excitation share_index batch_normalize cbn "
                     "binary xnor bin_output sway rotate stretch stretch_sway deform flipped dot "
                     "angle grad_centr reverse coordconv",
    "maxpool": "size stride stride_x stride_y padding maxpool_depth out_channels antialiasing",
    "route": "layers groups group_id stream wait_stream",
    "shortcut": "from activation weights_type weights_normalization",
    "upsample": "stride scale",
    "yolo": "mask anchors classes num max max_delta counters_per_class label_smooth_eps "
            "scale_x_y objectness_smooth new_coords iou_normalizer obj_normalizer "
            "cls_normalizer delta_normalizer iou_loss iou_thresh_kind beta_nms nms_kind jitter "
            "resize focal_loss ignore_thresh truth_thresh iou_thresh random map embedding_layer "
            "track_history_size sim_thresh dets_for_track dets_for_show track_ciou_norm "
            "show_details uc_normalizer beta1",
}.items()}
_warned: set[tuple[str, int, str]] = set()  # one warning per file, line and kind per process


def _warn(path: str, line: int, kind: str, msg: str) -> None:
    if (path, line, kind) not in _warned:
        _warned.add((path, line, kind))
        print(f"warning: {path}:{line}: {msg}", file=sys.stderr)


def key_warnings(defs: list[dict[str, Any]], path: str) -> list[tuple[int, str]]:
    """(line, message) for every key darknet would ignore: unknown keys and repeated ones."""
    out = []
    for d in defs:
        known = KNOWN_KEYS.get(d["type"])
        for key, line in d["_lines"].items():
            if known is not None and _written_key(key) not in known:
                out.append((line, f"[{d['type']}] unknown key '{_written_key(key)}' (darknet "
                                  "prints \"Unused field\" and ignores it; a typo?)"))
        for key, line in d.get("_dup_keys", []):
            out.append((line, f"[{d['type']}] duplicate key '{key}': darknet uses the first one "
                              f"(line {d['_lines'].get(_store_key(key), d['_line'])}) and "
                              "ignores this one"))
    return sorted(out)


_WS = re.compile(r"\s+")
_ESC = " "  # prefix for user keys that would collide with metadata; see the module docstring
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _store_key(key: str) -> str:
    return _ESC + key if key == "type" or key.startswith(("_", _ESC)) else key


def _written_key(key: str) -> str:
    return key[1:] if key.startswith(_ESC) else key


def _strip(line: str) -> str:
    # darknet's strip() deletes every whitespace character anywhere in the line
    return _WS.sub("", line)


def parse_cfg_text(text: str, path: str = "<cfg>", warn: bool = True) -> list[dict[str, Any]]:
    """Parse cfg text into module_defs, following darknet's read_cfg rules; with `warn`, keys
    darknet would ignore (unknown, repeated) are one warning line each on stderr."""
    if text.startswith("\ufeff"):  # a BOM would hide the first '[' from darknet; just drop it
        text = text[1:]
    if "\r" in text and "\n" not in text:
        raise CfgError("CR-only line endings: darknet reads the whole file as one line", path, 1)
    defs: list[dict[str, Any]] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = _strip(raw)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                # darknet's section type is the whole stripped line: "[maxpool] # x" is the
                # unknown type "[maxpool]#x", not a maxpool with a comment
                raise CfgError(f"unknown section {line!r} (darknet reads the whole line as the "
                               "section name; put comments on their own line)", path, lineno)
            name = line[1:-1]
            name = ALIASES.get(name, name)
            if name not in DARKNET_SECTIONS:
                raise CfgError(f"unknown section [{line[1:-1]}]", path, lineno)
            if not defs and name != "net":
                raise CfgError(f"first section must be [net], found [{name}]", path, lineno)
            if defs and name == "net":
                raise CfgError("[net] may only be the first section", path, lineno)
            defs.append({"type": name, "_line": lineno, "_path": path, "_lines": {}})
            continue
        if not defs:
            raise CfgError(f"'{raw.strip()}' appears before any [section]", path, lineno)
        if "=" not in line:
            raise CfgError(f"line has no '=': {raw.strip()!r}", path, lineno)
        key, value = line.split("=", 1)
        if not key:
            raise CfgError(f"line has no key: {raw.strip()!r}", path, lineno)
        if not value:
            raise CfgError(f"key '{key}' has no value", path, lineno)
        d, key = defs[-1], _store_key(key)
        if key in d:  # darknet's option_find: the first occurrence wins
            d.setdefault("_dup_keys", []).append((_written_key(key), lineno))
            continue
        d[key] = value
        d["_lines"][key] = lineno
    if not defs:
        raise CfgError("no sections found (empty cfg?)", path)
    if warn:
        for line, msg in key_warnings(defs, path):
            _warn(path, line, msg.split("'")[0], msg)
    return defs


def parse_cfg(path: str, warn: bool = True) -> list[dict[str, Any]]:
    """Read and parse a darknet cfg file (see parse_cfg_text for `warn`)."""
    if not os.path.isfile(path):
        raise YoloSlimError(f"cfg not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CfgError(f"not a text cfg file ({e.reason} at byte {e.start})", path) from None
    return parse_cfg_text(text, path, warn)


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return repr(value) if value != int(value) else str(int(value))
    return str(value)


def write_cfg(module_defs: list[dict[str, Any]]) -> str:
    """module_defs -> cfg text (LF endings, no comments), readable by darknet."""
    out = []
    for d in module_defs:
        out.append(f"[{d['type']}]")
        out.extend(f"{_written_key(k)}={_fmt(v)}" for k, v in d.items()
                   if k != "type" and not k.startswith("_"))
        out.append("")
    return "\n".join(out)


def save_cfg(module_defs: list[dict[str, Any]], path: str) -> None:
    from yolo_slim.core.errors import atomic_write_bytes
    atomic_write_bytes(path, write_cfg(module_defs).encode())


# ---- typed getters: numbers are parsed strictly, errors name file and line -------------------

def _where(d: dict[str, Any], key: str | None = None) -> tuple[str | None, int | None]:
    """File and line of a key (its own line when known, else its section's)."""
    line = d.get("_lines", {}).get(key) if key is not None else None
    return d.get("_path"), line if line is not None else d.get("_line")


def _number_text(d: dict[str, Any], key: str) -> str:
    # darknet's atoi/atof stop at an inline comment ("-1, 271 ###S4"), so do we
    return str(d[key]).split("#", 1)[0]


def _to_num(text: str, kind: type, d: dict[str, Any], key: str) -> Any:
    # plain decimals only: Python's int()/float() would also take "1_000", "nan" or "inf"
    if (_INT if kind is int else _FLOAT).fullmatch(text):
        return kind(text)
    want = "an integer" if kind is int else "a number"
    raise CfgError(f"[{d['type']}] {key}={d[key]!r} is not {want}", *_where(d, key))


def get_int(d: dict[str, Any], key: str, default: int | None = None) -> int:
    if key not in d:
        if default is None:
            raise CfgError(f"[{d['type']}] needs '{key}='", *_where(d))
        return default
    return _to_num(_number_text(d, key), int, d, key)


def get_float(d: dict[str, Any], key: str, default: float | None = None) -> float:
    if key not in d:
        if default is None:
            raise CfgError(f"[{d['type']}] needs '{key}='", *_where(d))
        return default
    return _to_num(_number_text(d, key), float, d, key)


def _get_list(d: dict[str, Any], key: str, kind: type, default: list | None) -> list:
    if key not in d:
        if default is None:
            raise CfgError(f"[{d['type']}] needs '{key}='", *_where(d))
        return list(default)
    text = _number_text(d, key)
    if isinstance(d[key], (list, tuple)):
        return [kind(v) for v in d[key]]
    parts = text.split(",")
    if parts and parts[-1] == "":  # a trailing comma would make darknet reference layer 0
        raise CfgError(f"[{d['type']}] {key}={d[key]!r} ends with a comma", *_where(d, key))
    return [_to_num(p, kind, d, key) for p in parts]


def get_ints(d: dict[str, Any], key: str, default: list[int] | None = None) -> list[int]:
    return _get_list(d, key, int, default)


def get_floats(d: dict[str, Any], key: str, default: list[float] | None = None) -> list[float]:
    return _get_list(d, key, float, default)


def get_str(d: dict[str, Any], key: str, default: str) -> str:
    return str(d.get(key, default))


def net_size(module_defs: list[dict[str, Any]]) -> tuple[int, int]:
    """(height, width) of the network input from [net]."""
    net = module_defs[0]
    return get_int(net, "height", 416), get_int(net, "width", 416)


def net_channels(module_defs: list[dict[str, Any]]) -> int:
    return get_int(module_defs[0], "channels", 3)


def set_classes(module_defs: list[dict[str, Any]], classes: int) -> list[dict[str, Any]]:
    """A copy of module_defs for `classes` classes: classes= in every [yolo] and filters=
    (anchors of its mask) x (5 + classes) in the [convolutional] right before it, the head that
    feeds it. Everything else is kept, so a --transfer of the original .weights loads every
    layer but those heads."""
    if classes < 1:
        raise YoloSlimError(f"classes must be at least 1 (got {classes})")
    out = [dict(d) for d in module_defs]
    heads = [i for i, d in enumerate(out) if d["type"] == "yolo"]
    if not heads:
        raise YoloSlimError("the cfg has no [yolo] section: nothing to set classes for")
    for i in heads:
        d, prev = out[i], out[i - 1]
        if prev["type"] != "convolutional":
            raise CfgError(f"[yolo] follows [{prev['type']}], not the [convolutional] that "
                           "makes its maps", *_where(d))
        anchors = len(get_ints(d, "mask")) if "mask" in d else get_int(d, "num", 1)
        d["classes"], prev["filters"] = str(classes), str(anchors * (5 + classes))
    return out
