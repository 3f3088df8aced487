"""Recipe files: a command's flags written down once, in JSON (`--config recipe.json`).

A recipe is a JSON object whose keys are the command's flag names, with `-` or `_` alike
("global-percent" or "global_percent", which are also the options dataclass's field names), and
whose values are what the flag takes, typed: numbers, true/false for a switch, a list for a flag
of several values. Every value goes through the flag's own check (type, range, choices), so a
recipe can set nothing a command line could not. Keys starting with `#` are comments.

A file may hold several recipes as sections, `{"train": {...}, "sparse": {...}}`, one chosen by
`--config FILE:SECTION`. A section (or an object inside one) may start from others of the same
file: `"extends": "train"` or `["run", "train"]`, merged in that order, its own keys last. Paths
in a recipe are read as on the command line (from the current folder).

--config may be given more than once (later files win); flags on the command line win over
every file. YAML is not read: PyYAML is not a dependency of this project.

The argparse side (which key is which flag, how its value is checked) is core/cli.Parser's;
this module reads files and names the file and key of anything wrong, in one line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, Callable, Iterable, Mapping

from yolo_slim.core.errors import YoloSlimError

_SECTION = re.compile(r"^(?P<path>.+):(?P<section>[A-Za-z0-9_.-]+)$")
_SWITCHES = (argparse.BooleanOptionalAction, argparse._StoreTrueAction, argparse._StoreFalseAction)


def split_ref(ref: str) -> tuple[str, str | None]:
    """'FILE:SECTION' -> (FILE, SECTION); a path that exists as given is a file, never split."""
    m = _SECTION.match(ref)
    if m is None or os.path.exists(ref):
        return ref, None
    return m["path"], m["section"]


def read_json(path: str, what: str = "recipe") -> Any:
    """A JSON file, BOM-safe; a missing or malformed file is one line naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise YoloSlimError(f"--config: {what} not found: {path}") from None
    except (OSError, ValueError) as e:
        raise YoloSlimError(f"--config {path}: not valid JSON ({e})") from None


def _extend(top: Mapping[str, Any], obj: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
    """`obj` with every "extends" (at any depth) replaced by the named top-level sections."""
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    bases = obj.get("extends", [])
    for name in [bases] if isinstance(bases, str) else bases:
        if not isinstance(name, str) or not isinstance(top.get(name), dict):
            raise YoloSlimError(f"{where}: extends {name!r}: no such section (the file has "
                                f"{', '.join(k for k, v in top.items() if isinstance(v, dict))})")
        if name in seen:
            raise YoloSlimError(f"{where}: extends {name!r} extends itself ({' -> '.join(seen + (name,))})")
        out.update(_extend(top, top[name], where, seen + (name,)))
    for k, v in obj.items():
        if k != "extends" and not k.startswith("#"):  # '#' keys are comments, at any depth
            out[k] = _extend(top, v, where, seen)
    return out


def load(ref: str) -> tuple[dict[str, Any], str]:
    """(the recipe's keys and values, the name errors give it: FILE or FILE:SECTION)."""
    path, section = split_ref(ref)
    obj = read_json(path)
    where = ref
    if not isinstance(obj, dict):
        raise YoloSlimError(f"{where}: a recipe is a JSON object of flag names and values")
    if section is not None:
        if not isinstance(obj.get(section), dict):
            raise YoloSlimError(f"{path}: no section {section!r} (it has "
                                f"{', '.join(k for k, v in obj.items() if isinstance(v, dict)) or 'none'})")
        obj = _extend(obj, {"extends": section}, where)
    else:
        obj = _extend(obj, obj, where)
    return obj, where


def key_name(key: str) -> str:
    """'--global-percent', 'global-percent', 'global_percent' -> 'global_percent'."""
    return key.lstrip("-").replace("-", "_")


def flag_actions(actions: Iterable[argparse.Action]) -> dict[str, argparse.Action]:
    """What each recipe key may name: the dest and every option string, in key_name form."""
    out: dict[str, argparse.Action] = {}
    for a in actions:
        if isinstance(a, argparse._HelpAction) or a.dest in ("config", argparse.SUPPRESS):
            continue
        for name in (a.dest, *a.option_strings):
            out.setdefault(key_name(name), a)
    return out


def _one(a: argparse.Action, v: Any) -> Any:
    """One JSON scalar through the flag's type and choices (as argparse would check its text)."""
    if isinstance(v, (dict, list)) or v is None or isinstance(v, bool):
        raise ValueError(f"expected {'a number' if a.type is not None else 'a string'}, "
                         f"got {json.dumps(v)}")
    text = v if isinstance(v, str) else repr(v)
    value = a.type(text) if callable(a.type) else text
    if a.choices is not None and value not in a.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, a.choices))}")
    return value


def value_for(a: argparse.Action, v: Any) -> Any:
    """What the flag's dest holds when the recipe gives it `v`; ValueError says why not."""
    convert: Callable[[Any], Any] | None = getattr(a, "recipe", None)
    if convert is not None:  # a flag with its own recipe form (iterate's --train: an object)
        return convert(v)
    if isinstance(a, _SWITCHES) or isinstance(a, argparse._StoreConstAction):
        if not isinstance(v, bool):
            raise ValueError(f"expected true or false, got {json.dumps(v)}")
        if isinstance(a, argparse._StoreConstAction) and not isinstance(a, _SWITCHES):
            return a.const if v else a.default
        return v if not isinstance(a, argparse._StoreFalseAction) else not v
    many = isinstance(a, argparse._AppendAction) or a.nargs in ("+", "*") or isinstance(a.nargs, int)
    if not many:
        return None if v is None and a.nargs == "?" else _one(a, v)
    items = v if isinstance(v, list) else [v]
    if isinstance(a.nargs, int) and len(items) != a.nargs:
        raise ValueError(f"expected {a.nargs} values, got {len(items)}")
    if a.nargs == "+" and not items:
        raise ValueError("expected at least one value")
    return [_one(a, x) for x in items]


def read(refs: Iterable[str], actions: Iterable[argparse.Action]) -> dict[str, Any]:
    """{dest: value} of the recipe files in order (later ones win), every key a flag of this
    command and every value checked as the flag checks it."""
    by_key = flag_actions(actions)
    out: dict[str, Any] = {}
    for ref in refs:
        obj, where = load(ref)
        for key, v in obj.items():
            a = by_key.get(key_name(key))
            if a is None:
                raise YoloSlimError(f"{where}: unknown key {key!r}: not a flag of this command "
                                    f"({hint(key_name(key), by_key)})")
            try:
                out[a.dest] = value_for(a, v)
            except (argparse.ArgumentTypeError, ValueError, TypeError, YoloSlimError) as e:
                raise YoloSlimError(f"{where}: {key}: {e}") from None
    return out


def hint(key: str, by_key: Mapping[str, Any]) -> str:
    import difflib
    close = difflib.get_close_matches(key, list(by_key), n=3)
    return f"did you mean {' or '.join(close)}?" if close else "--help lists them"
