#!/usr/bin/env bash
# Create a venv with one tested OpenMMLab stack and mmpola (idempotent).
#
#   STACK=default  .venv         torch 2.14.1, mmcv 2.1.0, mmdet 3.3.0, ...
#   STACK=torch21  .venv-torch21 torch 2.1.2 (oldest supported), mmcv 2.1.0
#   STACK=onedl    .venv-onedl   torch 2.14.1 with the OneDL fork
#                                (onedl-mmcv 2.3.6, onedl-mmdetection 3.5.1...)
# The pins of each stack are the pip constraints file
# requirements/stacks/$STACK.txt; mmpola itself is installed with its extras
# (ranges, pyproject.toml) under those constraints.
#
# mmcv ships only as source for these torches: it is compiled here with its
# ops (MMCV_WITH_OPS=1) against the venv's torch, and the wheel is kept in
#   $MMPOLA_CACHE/mmcv/<dist>-<ver>_torch-<ver>-<torch build>_py<ver>_<ops device>/
# e.g. mmcv-2.1.0_torch-2.14.1-cu130_py311_cpu, so a second setup (another
# checkout, CI) reuses it. A wheel is used only for the key it was built for
# and only if its ops load; an installed mmcv whose ops do not load (built
# against another torch) is detected and replaced.
#
# Environment:
#   STACK         default | torch21 | onedl (default: default)
#   TORCH         pinned (default): install the stack's torch/torchvision;
#                 existing: never install or replace torch (it is pinned to
#                 the version found). Either VENV names an existing
#                 environment with torch (installs into it), or a new venv
#                 is created with --system-site-packages over $PYTHON, an
#                 interpreter with torch (a cluster module, a conda env)
#   PYTHON        interpreter for the venv (default: python3)
#   VENV          venv path (default: .venv for STACK=default, else
#                 .venv-$STACK; with TORCH=existing .venv-$STACK-existing-torch)
#   MMPOLA_CACHE  wheel cache (default: ~/.cache/mmpola)
#   FORCE_CUDA=1  build mmcv's CUDA ops (needs nvcc matching torch's CUDA; set
#                 CUDA_HOME and TORCH_CUDA_ARCH_LIST, e.g. "8.0;9.0")
#   CUDA_FROM_PYPI=1  with FORCE_CUDA=1: install the CUDA toolkit matching the
#                 venv's torch from the package registry and use it as
#                 CUDA_HOME (no system toolkit needed; CUDA 13 torch wheels)
#   MAX_JOBS      parallel compile jobs (default: number of cores)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCRIPT="$ROOT/tools/setup_env.sh"
STACK=${STACK:-default}
TORCH_MODE=${TORCH:-pinned}
PYTHON=${PYTHON:-python3}
CACHE=${MMPOLA_CACHE:-$HOME/.cache/mmpola}
STACK_FILE="requirements/stacks/$STACK.txt"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ -f "$STACK_FILE" ] || die "unknown STACK=$STACK (no $STACK_FILE; one of:" \
    "$(cd requirements/stacks && ls *.txt | sed 's/\.txt$//' | tr '\n' ' '))"
case "$TORCH_MODE" in pinned|existing) ;;
    *) die "TORCH=$TORCH_MODE: use TORCH=pinned or TORCH=existing" ;; esac
if [ -z "${VENV:-}" ]; then
    if [ "$TORCH_MODE" = existing ]; then VENV=".venv-$STACK-existing-torch"
    elif [ "$STACK" = default ]; then VENV=.venv
    else VENV=".venv-$STACK"; fi
fi
STAMP="$VENV/.mmpola-setup"

# the stack's mmcv distribution (mmcv or onedl-mmcv) and version
pin() { sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "$STACK_FILE" | head -n1; }
if [ -n "$(pin onedl-mmcv)" ]; then MMCV_DIST=onedl-mmcv; else MMCV_DIST=mmcv; fi
MMCV_VERSION=$(pin "$MMCV_DIST")
[ -n "$MMCV_VERSION" ] || die "$STACK_FILE pins no mmcv version"
case "$STACK" in
    onedl) EXTRAS="onedl,analysis,tests" ;;
    *)     EXTRAS="all,tests" ;;
esac

# Everything that decides the environment's content goes into the stamp.
want_stamp() {
    { cat requirements/*.txt "$STACK_FILE" pyproject.toml "$SCRIPT"
      echo "STACK=$STACK TORCH=$TORCH_MODE FORCE_CUDA=${FORCE_CUDA:-0}"
      [ "$TORCH_MODE" = existing ] && "$VENV/bin/python" -c \
          'import torch; print(torch.__version__, torch.__file__)' 2>/dev/null
      true; } | sha256sum | cut -d' ' -f1
}

# Does the installed mmcv load its compiled ops? (An mmcv built against
# another torch fails here with an undefined symbol.) Quiet unless $1=loud.
mmcv_ops_ok() {
    local out
    out=$(MMCV_VERSION=$MMCV_VERSION "$VENV/bin/python" - 2>&1 <<'EOF'
import os, torch, mmcv
from mmcv.ops import get_compiling_cuda_version, nms
assert mmcv.__version__ == os.environ['MMCV_VERSION'], mmcv.__version__
b = torch.tensor([[0., 0., 1., 1.]]); s = torch.tensor([1.])
nms(b, s, 0.5)
if os.environ.get('FORCE_CUDA') == '1':  # CUDA ops asked for: built with them?
    assert get_compiling_cuda_version() != 'not available', 'mmcv has no CUDA ops'
EOF
    ) && return 0
    [ "${1:-}" = loud ] && printf '%s\n' "$out" | tail -n 3 | sed 's/^/[setup]   /'
    return 1
}

torch_info() {
    "$VENV/bin/python" -c 'import torch, os
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, '\
'GPU available: {torch.cuda.is_available()}) from '\
'{os.path.dirname(torch.__file__)}")'
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(want_stamp)" ] && mmcv_ops_ok; then
    log "environment up to date ($VENV, STACK=$STACK, $(torch_info))"
    exit 0
fi
log "STACK=$STACK TORCH=$TORCH_MODE VENV=$VENV"

# 1. venv + torch ---------------------------------------------------------
if [ "$TORCH_MODE" = existing ]; then
    if [ -x "$VENV/bin/python" ]; then  # an environment of the user's own
        "$VENV/bin/python" -c 'import torch' 2>/dev/null \
            || die "TORCH=existing: $VENV has no torch"
    else
        "$PYTHON" -c 'import torch' 2>/dev/null \
            || die "TORCH=existing: $PYTHON cannot import torch (set PYTHON" \
                   "to the interpreter that has it, or VENV to its venv)"
        log "creating $VENV over $PYTHON's site-packages (its torch is used)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$(cd "$VENV" && pwd)/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

# The constraints every pip call here runs under: the stack's pins, or, with
# an existing torch, the same less torch/torchvision, plus the torch found
# (so that nothing can replace it).
CONSTRAINTS="$STACK_FILE"
if [ "$TORCH_MODE" = existing ]; then
    CONSTRAINTS="$VENV/.mmpola-constraints.txt"
    grep -Ev '^(torch|torchvision)([=<>!~ ]|$)' "$STACK_FILE" > "$CONSTRAINTS"
    "$PY" - >> "$CONSTRAINTS" <<'EOF'
import importlib.metadata as md
for dist in ('torch', 'torchvision'):
    try:
        print(f'{dist}=={md.version(dist)}')
    except md.PackageNotFoundError:
        pass
EOF
else
    want_torch=$(pin torch)
    want_tv=$(pin torchvision)
    if ! "$PY" - "$want_torch" "$want_tv" 2>/dev/null <<'EOF'
import sys, torch, torchvision
ok = (torch.__version__.split('+')[0] == sys.argv[1]
      and torchvision.__version__.split('+')[0] == sys.argv[2])
sys.exit(0 if ok else 1)
EOF
    then
        log "installing torch==$want_torch torchvision==$want_tv"
        "${PIP[@]}" install -c "$CONSTRAINTS" "torch==$want_torch" \
            "torchvision==$want_tv"
    fi
fi
log "using $(torch_info)"
# CUDA_FROM_PYPI=1 (with FORCE_CUDA=1): compile against the CUDA toolkit that
# matches this torch, installed from the package registry into the venv
# (cuda-toolkit[nvcc,cccl,cudart]==<the version torch's metadata names>;
# CUDA 13 torch wheels, whose toolkit packages share one nvidia/cuXY tree).
if [ "${FORCE_CUDA:-0}" = 1 ] && [ "${CUDA_FROM_PYPI:-0}" = 1 ]; then
    read -r CUDA_SPEC CUDA_TREE < <("$PY" - <<'EOF'
import importlib.metadata as md, os, re, sysconfig, torch
spec = ''
for r in md.requires('torch') or []:
    m = re.match(r'cuda-toolkit\[[^\]]*\]==([0-9.]+)', r.replace(' ', ''))
    if m:
        spec = f'cuda-toolkit[nvcc,cccl,cudart]=={m.group(1)}'
major = (torch.version.cuda or '0').split('.')[0]
tree = os.path.join(sysconfig.get_paths()['purelib'], 'nvidia', f'cu{major}')
print(spec or '-', tree)
EOF
    )
    [ "$CUDA_SPEC" != - ] || die "CUDA_FROM_PYPI=1: this torch names no" \
        "cuda-toolkit version in its metadata (CUDA 13 wheels do); set CUDA_HOME"
    log "installing the CUDA toolkit $CUDA_SPEC from the package registry"
    "${PIP[@]}" install "$CUDA_SPEC"
    # the registry's runtime has only libcudart.so.N; the linker wants -lcudart
    [ -e "$CUDA_TREE/lib/libcudart.so" ] || \
        ln -s "$(cd "$CUDA_TREE/lib" && ls libcudart.so.* | head -n1)" \
            "$CUDA_TREE/lib/libcudart.so"
    export CUDA_HOME="$CUDA_TREE" PATH="$CUDA_TREE/bin:$PATH"
    log "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n1))"
fi
# Build requirements of mmcv's setup.py: pkg_resources (setuptools < 82),
# torch 2.14's own setuptools >= 77, onedl-mmcv's >= 80; ninja for a
# parallel build.
"${PIP[@]}" install -c "$CONSTRAINTS" "setuptools>=80,<82" wheel ninja \
    packaging numpy

# 2. mmcv with ops, from the keyed wheel cache ----------------------------
# KEY: mmcv dist + version, torch version + its build (cu130, cu121, cpu,
# rocm6.2), Python, and the device the ops are compiled for (for GPU builds
# with TORCH_CUDA_ARCH_LIST: a wheel for sm_90 has no kernels for sm_80).
read -r KEY LEGACY_KEY < <("$PY" - "$MMCV_DIST" "$MMCV_VERSION" <<'EOF'
import os, re, sys, torch
dist, ver = sys.argv[1:3]
tv = torch.__version__.split('+')[0]
if torch.version.cuda:
    build = 'cu' + torch.version.cuda.replace('.', '')
elif getattr(torch.version, 'hip', None):
    build = 'rocm' + torch.version.hip.split('-')[0]
else:
    build = 'cpu'
cuda = os.environ.get('FORCE_CUDA') == '1' or torch.cuda.is_available()
dev = build if (cuda and build != 'cpu') else 'cpu'
py = f'py{sys.version_info.major}{sys.version_info.minor}'
# LEGACY: the key before 2026-12 (no torch build), still looked up for CPU
# builds (GPU builds then had no arch in the key: not reused)
legacy = f'{dist}-{ver}_torch-{tv}_{py}_{dev}'
if dev != 'cpu':
    arch = os.environ.get('TORCH_CUDA_ARCH_LIST', '').strip()
    dev += '-arch-' + (re.sub(r'[^0-9A-Za-z+]+', '-', arch).strip('-')
                       if arch else 'default')
key = f'{dist}-{ver}_torch-{tv}-{build}_{py}_{dev}'
print(key, legacy if dev == 'cpu' else key)
EOF
)
[ -n "${LEGACY_KEY:-}" ] || die "could not compute the wheel cache key (torch import failed?)"
WHEEL_DIR="$CACHE/mmcv/$KEY"

build_mmcv() {
    local work src
    work=$(mktemp -d)
    log "compiling $MMCV_DIST $MMCV_VERSION with ops for $KEY (15-25 min on 2 cores)"
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation \
        "$MMCV_DIST==$MMCV_VERSION" -d "$work"
    tar -xzf "$work"/*.tar.gz -C "$work"
    src=$(find "$work" -mindepth 2 -maxdepth 2 -name setup.py -printf '%h\n' | head -n1)
    [ -n "$src" ] || die "no setup.py in the $MMCV_DIST source"
    # torch >= 2.14 headers require C++20; mmcv 2.1.0 and onedl-mmcv 2.3.6
    # hard-code C++17 (C++14 for old torches) for g++ and nvcc.
    if "$PY" -c "import torch,sys; from packaging.version import Version as V; sys.exit(0 if V(torch.__version__.split('+')[0]) >= V('2.14') else 1)"; then
        sed -i 's/-std=c++1[47]/-std=c++20/g' "$src/setup.py"
        log "raised $MMCV_DIST's C++ standard to C++20 for this torch"
    fi
    ( cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "$PY" -m pip --disable-pip-version-check wheel -q \
        --no-build-isolation --no-deps . -w "$work/dist" ) \
        || die "$MMCV_DIST build failed (see output above)"
    mkdir -p "$WHEEL_DIR"
    mv "$work"/dist/*.whl "$WHEEL_DIR"/
    rm -rf "$work"
}

# Installs the cached wheel, then mmcv's own run-time dependencies
# (mmengine, opencv, ...), which importing it needs.
install_cached_mmcv() {
    local whl dir
    for dir in "$WHEEL_DIR" "$CACHE/mmcv/$LEGACY_KEY"; do
        whl=$(ls "$dir"/*.whl 2>/dev/null | head -n1)
        [ -n "$whl" ] && break
    done
    [ -n "$whl" ] || return 1
    log "installing cached $(basename "$whl") ($(basename "$dir"))"
    "${PIP[@]}" install --force-reinstall --no-deps "$whl"
    "${PIP[@]}" install -c "$CONSTRAINTS" "$whl"
    if [ "$dir" != "$WHEEL_DIR" ] && mmcv_ops_ok; then
        mkdir -p "$WHEEL_DIR" && cp "$whl" "$WHEEL_DIR"/
    fi
}

if mmcv_ops_ok; then
    log "$MMCV_DIST $MMCV_VERSION with ops already installed and loading"
else
    if "$PY" -c "import mmcv" 2>/dev/null; then
        log "installed mmcv does not load its ops with this torch" \
            "(built against another torch, or another version?): replacing it"
        mmcv_ops_ok loud || true
        "${PIP[@]}" uninstall -y mmcv onedl-mmcv 2>/dev/null || true
    fi
    if ! install_cached_mmcv || ! mmcv_ops_ok loud; then
        if [ -d "$WHEEL_DIR" ]; then
            log "cached wheel in $WHEEL_DIR does not work here: rebuilding"
            mv "$WHEEL_DIR" "$WHEEL_DIR.broken-$(date +%s)"
        fi
        build_mmcv
        install_cached_mmcv || die "no wheel produced in $WHEEL_DIR"
        mmcv_ops_ok loud || die "freshly built mmcv does not load its ops; see above"
    fi
fi

# 3. the rest of the stack and mmpola -------------------------------------
log "installing mmpola[$EXTRAS] under $CONSTRAINTS"
"${PIP[@]}" install -c "$CONSTRAINTS" --no-build-isolation -e ".[$EXTRAS]"
mmcv_ops_ok loud || die "mmcv ops broken after installing the requirements"
"$PY" -c "import mmdet, mmseg, mmpretrain, mmpola" \
    || die "the OpenMMLab stack does not import; see the traceback above"
"$PY" - <<'EOF'
import importlib.metadata as md
names = ('torch', 'torchvision', 'numpy', 'mmengine', 'onedl-mmengine', 'mmcv',
         'onedl-mmcv', 'mmdet', 'onedl-mmdetection', 'mmsegmentation',
         'onedl-mmsegmentation', 'mmpretrain', 'onedl-mmpretrain')
found = []
for n in names:
    try:
        found.append(f'{n} {md.version(n)}')
    except md.PackageNotFoundError:
        pass
print('[setup] stack: ' + ', '.join(found))
EOF
want_stamp > "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
