"""Command lines, declared once: an options dataclass is the flags (`snake_case` field ->
`--kebab-case` flag, with its default, type, help, choices and numeric range from the field's
metadata), the parsed flags are the dataclass again, and the resolved values are written as JSON
next to the tool's output.

Field metadata understood: help, choices, nargs, const, metavar, aliases (e.g. ("-sr",)),
type (when the default is None), and the range of a number: min, max (inclusive), gt, lt
(exclusive), multiple_of; exclusive (a mutually exclusive group's name), group (a --help
section), switch (a bool flag without --no-), flag=False (no flag). A tool that combines others composes their dataclasses by
inheritance (its dataclass subclasses theirs: one flat set of flags, one flat JSON).

Every number flag is checked when it is parsed (a non-finite float never passes), and every
parser here is a `Parser`: its errors are one `error: ...` line (exit 2 through
core.errors.cli_main), it takes flags only as spelled (no abbreviations; core/flag_hints.py names
the nearest), and `--config RECIPE`: the same flags from a JSON file, the command line winning.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

from yolo_slim.core import flag_hints, recipe
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes

RANGE_KEYS = ("min", "max", "gt", "lt", "multiple_of")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises YoloSlimError: one line, exit status 2; every
    command takes `--config RECIPE` (core/recipe.py: a JSON file of its flags, which the
    command line overrides), and `given` holds the dests the last parse set (by flag or recipe)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw = {"formatter_class": argparse.RawDescriptionHelpFormatter, "allow_abbrev": False, **kw}
        super().__init__(*args, **kw)  # no abbreviations: a later flag makes one ambiguous (--conf)
        self.given: set[str] = set()
        self.add_argument("--config", action="append", default=[], metavar="RECIPE",
                          help="a recipe: JSON of this command's flags (FILE or FILE:SECTION; "
                               "repeatable, later wins); flags given here override it")

    def error(self, message: str):  # type: ignore[override]
        raise YoloSlimError(message)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        ns, rest = self.parse_known_args(args, namespace)
        if rest:  # argparse's line, with the flags nearest to each unknown one
            raise YoloSlimError(flag_hints.unrecognized(rest, self._option_string_actions))
        return ns

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        refs = _Configs().parse_known_args(argv)[0].config  # the recipes first: they set defaults
        values = recipe.read(refs, self._actions) if refs else {}
        start, accumulate = _start(self, namespace)
        with _relaxed(self, values):  # a flag the recipe sets is not required on the line
            ns, rest = super().parse_known_args(argv, start)
        given = {k for k, v in vars(ns).items()
                 if v is not _UNSET and not (k in accumulate and v == accumulate[k])}
        # argparse sets an optional positional (nargs * or ?) the line left out: not given
        given -= {a.dest for a in self._actions if not a.option_strings and a.nargs in ("*", "?")
                  and getattr(ns, a.dest) in ([], a.default)}
        on_line = set(given)
        for dest, v in values.items():  # the command line wins, a group member it gave too
            if dest in accumulate and dest in on_line:  # repeatable flags add to the recipe's
                setattr(ns, dest, [*v, *getattr(ns, dest)[len(accumulate[dest]):]])
            elif dest in on_line or _group_taken(self, dest, on_line):
                continue
            else:
                setattr(ns, dest, v)
            given.add(dest)
        _fill_defaults(self, ns)
        for g in self._mutually_exclusive_groups:  # what the recipes set must exclude too
            both = [a.option_strings[0] for a in g._group_actions
                    if a.dest in given and getattr(ns, a.dest) != a.default]
            if len(both) > 1:
                raise YoloSlimError(f"--config {' '.join(refs)}: {' and '.join(both)} exclude each other")
        if ns.config != refs:  # never a recipe named but not read
            raise YoloSlimError(f"--config: give it as --config FILE (read {refs}, parsed {ns.config})")
        self.given = given - {"config"}
        return ns, rest


class _Configs(argparse.ArgumentParser):
    """Only --config, read before the command's own parse (whose defaults the recipes set)."""

    def __init__(self) -> None:
        super().__init__(add_help=False, allow_abbrev=False)  # an abbreviation: the check above
        self.add_argument("--config", action="append", default=[])

    def error(self, message: str):  # type: ignore[override]
        raise YoloSlimError(message)


_UNSET = object()
_ACCUMULATE = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction,
               argparse._ExtendAction)


def _start(p: argparse.ArgumentParser, namespace: argparse.Namespace | None
           ) -> tuple[argparse.Namespace, dict[str, Any]]:
    """A namespace with a marker for every dest, so what the command line set can be told from
    a default; actions that add to the value already there (append, count) start from a copy of
    their default and count as given when it changed."""
    actions = [a for a in p._actions if a.dest != argparse.SUPPRESS and a.default != argparse.SUPPRESS]
    accumulate = {a.dest: copy.copy(a.default) for a in actions if isinstance(a, _ACCUMULATE)}
    start = namespace if namespace is not None else argparse.Namespace()
    for a in actions:
        if not hasattr(start, a.dest):
            setattr(start, a.dest, copy.copy(accumulate[a.dest]) if a.dest in accumulate else _UNSET)
    return start, accumulate


def _fill_defaults(p: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    for a in p._actions:
        if getattr(ns, a.dest, None) is _UNSET:
            default = a.default
            if isinstance(default, str) and a.type is not None and callable(a.type):
                default = a.type(default)
            setattr(ns, a.dest, default)


def _group_taken(p: argparse.ArgumentParser, dest: str, given: set[str]) -> bool:
    """Whether the command line gave another member of a mutually exclusive group of `dest`."""
    return any(dest in {a.dest for a in g._group_actions} and
               any(a.dest in given and a.dest != dest for a in g._group_actions)
               for g in p._mutually_exclusive_groups)


@contextlib.contextmanager
def _relaxed(p: argparse.ArgumentParser, values: Mapping[str, Any]) -> Iterator[None]:
    """Required flags (and required groups) the recipe sets are optional for this parse."""
    changed = [a for a in p._actions if a.required and a.dest in values] + \
        [g for g in p._mutually_exclusive_groups
         if g.required and any(a.dest in values for a in g._group_actions)]
    for o in changed:
        o.required = False
    try:
        yield
    finally:
        for o in changed:
            o.required = True


def range_text(rng: Mapping[str, Any]) -> str:
    parts = [f"{op} {rng[k]}" for k, op in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<"))
             if rng.get(k) is not None]
    if rng.get("multiple_of"):
        parts.append(f"a multiple of {rng['multiple_of']}")
    return " and ".join(parts)


def check_number(value: float, rng: Mapping[str, Any]) -> str | None:
    """None if `value` is in the range, else what is wrong."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    lo, hi, gt, lt, mult = (rng.get(k) for k in RANGE_KEYS)
    if (lo is not None and value < lo) or (hi is not None and value > hi) or \
            (gt is not None and value <= gt) or (lt is not None and value >= lt) or \
            (mult and value % mult):
        return f"must be {range_text(rng)}, got {value:g}"
    return None


def number(kind: type = float, **rng: Any) -> Callable[[str], Any]:
    """An argparse `type` that parses an int/float and checks its range (min, max, gt, lt,
    multiple_of); argparse reports a failure as `argument --flag: <why>`."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = check_number(value, rng)
        if bad:
            raise argparse.ArgumentTypeError(bad)
        return value

    convert.__name__ = kind.__name__
    return convert


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def add_field(p: argparse.ArgumentParser | Any, f: dataclasses.Field, required: bool = False) -> None:
    meta, default = f.metadata, field_default(f)
    names = [flag_name(f.name), *meta.get("aliases", ())]
    rng = {k: meta[k] for k in RANGE_KEYS if k in meta}
    help_ = meta.get("help", "")
    if rng:
        help_ = f"{help_} ({range_text(rng)})".strip()
    kw: dict[str, Any] = {"default": default, "help": help_ or None, "dest": f.name}
    kind = meta.get("type") or (type(default) if default is not None else str)
    if kind is bool:  # --x/--no-x, or (metadata switch) only --x: a choice in a group
        p.add_argument(*names, action="store_true" if meta.get("switch") else
                       argparse.BooleanOptionalAction, **kw)
        return
    if isinstance(default, list):
        kw.update(nargs="+", type=number(meta.get("item", float), **rng))
    else:
        kw["type"] = number(kind, **rng) if kind in (int, float) else kind
        kw.update({k: meta[k] for k in ("nargs", "const", "choices", "metavar", "required") if k in meta})
    if required:
        kw["required"] = True
    p.add_argument(*names, **kw)


def add_dataclass_args(p: argparse.ArgumentParser | Any, cls: type, exclude: Sequence[str] = (),
                       required: Sequence[str] = ()) -> None:
    """One flag per field of the dataclass `cls` (see the module docstring). `required` names
    the fields a command needs; fields whose metadata say "exclusive": NAME are one mutually
    exclusive group (one of them needed when NAME is in `required`); "group": TITLE lists a
    field under that title in --help."""
    groups: dict[tuple[str, str], Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.metadata.get("flag", True):
            continue
        to, name, title = p, f.metadata.get("exclusive"), f.metadata.get("group")
        if name and ("x", name) not in groups:
            groups["x", name] = p.add_mutually_exclusive_group(required=name in required)
        elif title and not name and ("g", title) not in groups:
            groups["g", title] = p.add_argument_group(title)
        if name or title:
            to = groups["x", name] if name else groups["g", title]
        add_field(to, f, f.name in required)


def from_args(cls: type, a: argparse.Namespace, **given: Any) -> Any:
    """An options dataclass from the parsed flags of the same names (`given` set the rest)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(given)
    return cls(**{k: getattr(a, k) for k in names if hasattr(a, k)}, **given)


def parse_given(p: argparse.ArgumentParser, argv: Sequence[str] | None
                ) -> tuple[argparse.Namespace | None, set[str]]:
    """parse_args, plus the set of dests the command line or a --config recipe set (a flag
    given with its default value counts as given); (None, set()) after --help. A bad command
    line is a YoloSlimError."""
    try:
        if isinstance(p, Parser):
            ns = p.parse_args(argv)
            return ns, set(p.given)
        start, accumulate = _start(p, None)
        ns = p.parse_args(argv, start)
    except SystemExit as e:  # --help (0), or a plain argparse parser that printed its error
        if e.code:
            raise YoloSlimError("bad command line (see above)") from None
        return None, set()
    given = {k for k, v in vars(ns).items()
             if v is not _UNSET and not (k in accumulate and v == accumulate[k])}
    _fill_defaults(p, ns)
    return ns, given


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | None:
    """parse_args, but a bad command line is a YoloSlimError (exit 2); None after --help."""
    return parse_given(p, argv)[0]


def module_parser(prog: str, doc: str | None, data: bool = True) -> Parser:
    """The parser a `python -m yolo_slim.<tool>` starts from: --cfg, --weights, [--data],
    --output-dir (all but --cfg required)."""
    p = Parser(prog=prog, description=doc)
    p.add_argument("--cfg")
    p.add_argument("--weights", required=True)
    if data:
        p.add_argument("--data", required=True)
    p.add_argument("--output-dir", required=True)
    return p


def refuse_changed(saved: Any, new: Any, given: set[str], allowed: Sequence[str], what: str) -> None:
    """Flags given on the command line that would change `saved` (a dataclass) silently are an
    error, e.g. --resume with another --epochs; `allowed` may differ."""
    changed = [f"{flag_name(k)} {getattr(new, k)} (the run has {getattr(saved, k)})"
               for k in sorted(given) if hasattr(saved, k) and k not in allowed
               and getattr(new, k) != getattr(saved, k)]
    if changed:
        raise YoloSlimError(f"{what} keeps the settings it was started with; "
                            f"{', '.join(changed)} would change them. Start a new run from its "
                            "last.pt with --weights instead")


def _plain(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return _plain(dataclasses.asdict(o))
    if isinstance(o, argparse.Namespace):
        return _plain(vars(o))
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [_plain(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (str, int, float, bool)) or o is None:
        return o
    if hasattr(o, "item"):  # numpy / torch scalars
        return _plain(o.item())
    return str(o)


def resolved(args: Any, **extra: Any) -> dict[str, Any]:
    """The JSON-able resolved config: a dataclass or parsed flags, plus `extra` values."""
    return {**_plain(args), **_plain(extra)}


def write_resolved(path: str, args: Any, **extra: Any) -> str:
    """Write `resolved(args, **extra)` atomically to `path` (a file, or a folder -> args.json)."""
    if os.path.isdir(path):
        path = os.path.join(path, "args.json")
    atomic_write_bytes(path, json.dumps(resolved(args, **extra), indent=2).encode())
    return path
