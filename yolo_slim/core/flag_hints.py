"""What an unknown flag probably meant. Parsers take flags only as spelled (no argparse
abbreviations: `--conf` matched both --config and --conf-thres, and every added flag can make a
working abbreviation ambiguous), so a short or misspelt flag is an error that names the flags
nearest to it: those it abbreviates first, then close spellings."""
from __future__ import annotations

import difflib
from typing import Iterable, Sequence


def nearest_flags(token: str, flags: Iterable[str], n: int = 3) -> list[str]:
    """The known `flags` nearest to `token`: those it is the start of ('--conf' ->
    ['--conf-thres', '--config']), or else close spellings ('--img-szie' -> ['--img-size']);
    at most n."""
    name = token.split("=", 1)[0]
    known = sorted({f for f in flags if f.startswith("--")})
    starts = [f for f in known if f.startswith(name) and f != name]
    return starts[:n] or difflib.get_close_matches(name, known, n=n, cutoff=0.6)


def unrecognized(rest: Sequence[str], flags: Iterable[str]) -> str:
    """argparse's one line for arguments no flag took, with the nearest flags of each
    unknown one ('--conf 0.3' -> '... (--conf: did you mean --conf-thres or --config?)')."""
    flags = list(flags)
    hints = []
    for token in rest:
        near = nearest_flags(token, flags) if token.startswith("--") else []
        if near:
            hints.append(f"{token.split('=', 1)[0]}: did you mean "
                         f"{', '.join(near[:-1]) + ' or ' if len(near) > 1 else ''}{near[-1]}?")
    return f"unrecognized arguments: {' '.join(rest)}" + (f" ({'; '.join(hints)})" if hints else "")
