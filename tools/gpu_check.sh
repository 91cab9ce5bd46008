#!/usr/bin/env bash
# The GPU check's two halves (docs/install.md, "GPU check"):
#
#   bash tools/gpu_check.sh wheels [DIR]   here (make gpu-wheels): the wheels
#       the GPU machine lacks, into DIR (default .whl, ignored by git): mmcv
#       2.1.0 built WITHOUT ops (MMCV_WITH_OPS=0: pure Python, about a minute,
#       cached), mmengine, mmpretrain, mmdet and their dependencies that the
#       GPU machine's image does not have; cp312 manylinux wheels where binary.
#   bash tools/gpu_check.sh run OUT [gpu_check.py options]   on the GPU
#       machine (Python 3.12, torch 2.11 + CUDA 13, no network): installs
#       .whl/*.whl into /tmp/site and runs tools/gpu_check.py --out OUT.
#
# Environment: PY (python that builds the mmcv wheel, default .venv/bin/python),
# MMPOLA_CACHE (default ~/.cache/mmpola).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${MMPOLA_CACHE:-$HOME/.cache/mmpola}
MMCV_VERSION=2.1.0
# What the carried packages need beyond what the GPU machine's image has
# (device/KINDS.md lists it: torch, numpy, matplotlib, opencv-python-headless,
# pyyaml, rich, einops, scipy, six, tqdm, markdown, click, pytest,
# pytest-timeout, ... are there). Pure Python unless noted.
DEPS=(addict yapf platformdirs termcolor      # mmengine, mmcv
      mat4py model-index ordered-set importlib-metadata lazy-importer  # mmpretrain
      terminaltables pycocotools shapely)     # mmdet (the last two binary)
PKGS=("mmengine==0.10.7" "mmpretrain==1.2.0" "mmdet==3.3.0")

log() { printf '[gpu_check] %s\n' "$*"; }
die() { printf '[gpu_check] ERROR: %s\n' "$*" >&2; exit 1; }

wheels() {
    local dir=${1:-.whl} py=${PY:-.venv/bin/python}
    [ -x "$py" ] || die "no $py: run make setup first (or set PY)"
    py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
    rm -rf "$dir" && mkdir -p "$dir"
    # 1. mmcv without ops (pure Python; its wheel is called mmcv-lite), built
    #    once and cached
    local noops="$CACHE/mmcv/mmcv-${MMCV_VERSION}_no-ops"
    if ! ls "$noops"/mmcv*.whl >/dev/null 2>&1; then
        local work
        work=$(mktemp -d)
        log "building mmcv $MMCV_VERSION without ops (MMCV_WITH_OPS=0)"
        "$py" -m pip --disable-pip-version-check download -q --no-deps \
            --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
        tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
        ( cd "$work/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=0 "$py" -m pip \
            --disable-pip-version-check wheel -q --no-build-isolation \
            --no-deps . -w "$work/dist" )
        mkdir -p "$noops" && mv "$work"/dist/mmcv*.whl "$noops"/
        rm -rf "$work"
    fi
    cp "$noops"/mmcv*.whl "$dir"/
    # 2. the rest from the registry, for CPython 3.12 on x86-64 Linux
    log "downloading ${PKGS[*]} ${DEPS[*]}"
    local plat=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
             manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        plat+=(--platform "$p")
    done
    python3 -m pip --disable-pip-version-check download -q --no-deps \
        --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plat[@]}" -d "$dir" "${PKGS[@]}" "${DEPS[@]}"
    local n size
    n=$(ls "$dir"/*.whl | wc -l)
    size=$(du -sm "$dir" | cut -f1)
    log "$n wheels, ${size} MiB in $dir"
    ls "$dir"
    [ "$size" -le 48 ] || die "$dir is ${size} MiB: with the working tree it" \
        "would not fit the 64 MiB a GPU run carries"
}

run() {
    local out=${1:?usage: gpu_check.sh run OUT [options]}
    shift
    if ls .whl/*.whl >/dev/null 2>&1; then
        log "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
        python3 -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        rm -rf /tmp/site/tests  # a wheel's stray top-level 'tests' package
        export PYTHONPATH="$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        log "no .whl/ here: using the packages already installed"
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi -L || true
    PYTHONUNBUFFERED=1 python3 tools/gpu_check.py --out "$out" "$@"
}

case "${1:-}" in
    wheels) shift; wheels "$@" ;;
    run) shift; run "$@" ;;
    *) die "usage: $0 wheels [DIR] | run OUT [gpu_check.py options]" ;;
esac
