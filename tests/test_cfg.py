"""cfg parser vs darknet's read_cfg rules (darknet-format.md §1) and the write-back round trip."""
from __future__ import annotations

import re

import pytest

from yolo_slim.darknet.cfg import (CfgError, get_float, get_floats, get_int, get_ints, net_size,
                           parse_cfg, parse_cfg_text, write_cfg)
from yolo_slim.core.errors import YoloSlimError


def user_keys(d):
    """A section's keys as a user wrote them (metadata dropped), in order."""
    return [(k, v) for k, v in d.items() if not k.startswith("_")]


def strip_meta(defs):
    return [user_keys(d) for d in defs]


MESSY = """# a comment line
; another comment style

  [net]
 width = 64   # a comment only counts at the start of a line, so this is part of the value
height=48
\tchannels\t=\t3
a b = c d

[convolutional]
batch_normalize=1
filters=64#c
filters=32
size = 3
stride=2
pad=1
activation = leaky
   # indented comment

[yolo]
mask = 0, 1
anchors = 10,13,  16,30 , 33,23
classes=2
num=3
"""


def test_messy_cfg_follows_darknet_strip_rules():
    defs = parse_cfg_text(MESSY, "m.cfg")
    net, conv, yolo = defs
    assert [d["type"] for d in defs] == ["net", "convolutional", "yolo"]
    # strip() removes every whitespace character anywhere in the line
    assert net["width"] == "64#acommentonlycountsatthestartofaline,sothisispartofthevalue"
    assert get_int(net, "width") == 64  # atoi reads the numeric prefix; '#' ends it for us
    assert net["height"] == "48" and net["channels"] == "3" and net["ab"] == "cd"
    # duplicate key: the first one wins (option_find searches from the front), later is noted
    assert get_int(conv, "filters") == 64 and conv["_dup_keys"] == [("filters", 13)]
    assert conv["size"] == "3" and conv["activation"] == "leaky"
    assert get_ints(yolo, "mask") == [0, 1]
    assert yolo["anchors"] == "10,13,16,30,33,23"
    assert get_floats(yolo, "anchors") == [10, 13, 16, 30, 33, 23]
    # section lines are recorded for error messages
    assert (net["_line"], conv["_line"], yolo["_line"]) == (4, 10, 20)


def test_crlf_parses_like_lf_and_bom_is_dropped():
    lf = parse_cfg_text(MESSY, "m.cfg")
    crlf = parse_cfg_text(MESSY.replace("\n", "\r\n"), "m.cfg")
    bom = parse_cfg_text("\ufeff" + MESSY, "m.cfg")
    assert strip_meta(crlf) == strip_meta(lf) == strip_meta(bom)


def test_cr_only_file_is_an_error():
    with pytest.raises(CfgError, match=r"m\.cfg:1: CR-only"):
        parse_cfg_text("[net]\rwidth=64\r", "m.cfg")


def test_aliases_are_canonical_and_type_key_is_kept():
    defs = parse_cfg_text("[network]\n[conv]\nfilters=4\n[max]\nsize=2\n[cost]\ntype=sse\n"
                          "_odd=1\n", "a.cfg")
    assert [d["type"] for d in defs] == ["net", "convolutional", "maxpool", "cost"]
    # a user key named "type" or starting with "_" must not clash with the metadata
    text = write_cfg(defs)
    assert "[cost]\ntype=sse\n_odd=1\n" in text
    assert strip_meta(parse_cfg_text(text)) == strip_meta(defs)


@pytest.mark.parametrize("text, line, pattern", [
    ("[net]\n[maxpool] # x\nsize=2\n", 2, r"unknown section '\[maxpool\]#x'"),
    ("[net]\n[Maxpool]\n", 2, r"unknown section \[Maxpool\]"),   # names are case-sensitive
    ("[net]\n[foo]\n", 2, r"unknown section \[foo\]"),
    ("[net]\n[convolutional]\nstride=\n", 3, r"key 'stride' has no value"),
    ("[net]\n[convolutional]\nfilters 16\n", 3, r"no '='"),
    ("width=3\n[net]\n", 1, r"before any \[section\]"),
    ("[convolutional]\nfilters=1\n", 1, r"first section must be \[net\]"),
    ("[net]\n[net]\n", 2, r"\[net\] may only be the first section"),
    ("[net]\n[route]\n=5\n", 3, r"no key"),
])
def test_syntax_errors_name_file_and_line(text, line, pattern):
    with pytest.raises(CfgError) as e:
        parse_cfg_text(text, "bad.cfg")
    msg = str(e.value)
    assert msg.startswith(f"bad.cfg:{line}: "), msg
    assert re.search(pattern, msg), msg
    assert "\n" not in msg


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(CfgError, match="no sections"):
        parse_cfg_text("# only a comment\n\n", "e.cfg")
    with pytest.raises(YoloSlimError, match="cfg not found"):
        parse_cfg(str(tmp_path / "nope.cfg"))
    (tmp_path / "bin.cfg").write_bytes(b"[net]\n\xff\xfe\n")
    with pytest.raises(CfgError, match="not a text cfg"):
        parse_cfg(str(tmp_path / "bin.cfg"))


NUMS = """[net]
[convolutional]
filters=abc
size=0.5
stride=1e-5
pad=nan
padding=1_0
groups=+2
dilation=-1
[route]
layers=-1, 61 ###S4
groups=1,
"""


def test_typed_getters_are_strict_and_name_the_key_line():
    _, conv, route = parse_cfg_text(NUMS, "n.cfg")
    with pytest.raises(CfgError, match=r"^n\.cfg:3: \[convolutional\] filters='abc' is not an "
                                       r"integer$"):
        get_int(conv, "filters")
    with pytest.raises(CfgError, match=r"^n\.cfg:4: .*size='0.5' is not an integer"):
        get_int(conv, "size")  # darknet's atoi would silently read 0
    assert get_float(conv, "size") == 0.5
    assert get_float(conv, "stride") == 1e-5
    for key, line in (("pad", 6), ("padding", 7)):  # Python's float() would accept these
        with pytest.raises(CfgError, match=rf"^n\.cfg:{line}: "):
            get_float(conv, key)
    assert get_int(conv, "groups") == 2 and get_int(conv, "dilation") == -1
    assert get_int(conv, "missing", 7) == 7 and get_float(conv, "missing", 0.25) == 0.25
    with pytest.raises(CfgError, match=r"^n\.cfg:2: \[convolutional\] needs 'xyz='"):
        get_int(conv, "xyz")
    # inline comment after a number list: darknet's atoi stops there, so do we
    assert get_ints(route, "layers") == [-1, 61]
    # a trailing comma would make darknet reference layer 0: refused, naming the line
    with pytest.raises(CfgError, match=r"^n\.cfg:12: .*ends with a comma"):
        get_ints(route, "groups")


def test_net_size():
    defs = parse_cfg_text("[net]\nwidth=96\nheight=64\n")
    assert net_size(defs) == (64, 96)
    assert net_size(parse_cfg_text("[net]\n")) == (416, 416)


def test_write_keeps_every_key_order_and_value_text():
    text = ("[net]\nwidth=416\nheight=416\nfoo_unknown=bar\n\n[yolo]\nmask=0,1,2\n"
            "anchors=10,13,16,30,33,23,30,61,62,45,59,119,116,90,156,198,373,326\n"
            "scale_x_y=1.05\njitter=.3\nlayers=-1,61###S4\n")
    defs = parse_cfg_text(text)
    assert write_cfg(defs) == text
    # the writer emits no metadata and no duplicate keys
    dup = parse_cfg_text("[net]\nwidth=1\nwidth=2\n")
    assert write_cfg(dup) == "[net]\nwidth=1\n"


def test_round_trip_every_corpus_cfg(corpus_dir):
    """write_cfg(parse_cfg(f)) parses back to the same sections, keys, order and values."""
    paths = sorted(corpus_dir.rglob("*.cfg"))
    assert len(paths) >= 150
    checked = 0
    for path in paths:
        defs = parse_cfg(str(path))
        again = parse_cfg_text(write_cfg(defs), "again.cfg")
        assert [d["type"] for d in again] == [d["type"] for d in defs], path
        assert strip_meta(again) == strip_meta(defs), path
        # anchors stay as written: same numbers, never truncated to ints
        for a, b in zip(defs, again):
            if "anchors" in a:
                assert get_floats(b, "anchors") == get_floats(a, "anchors")
        checked += 1
    assert checked == len(paths)


def test_corpus_anchor_text_with_spaces_keeps_its_numbers(corpus_dir):
    path = corpus_dir / "AlexeyAB" / "yolov3.cfg"
    raw = path.read_text()
    assert "10,13,  16,30" in raw  # the published cfg has spaces inside the list
    yolo = next(d for d in parse_cfg(str(path)) if d["type"] == "yolo")
    assert get_floats(yolo, "anchors")[:4] == [10.0, 13.0, 16.0, 30.0]
    assert len(get_floats(yolo, "anchors")) == 18
