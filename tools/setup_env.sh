#!/usr/bin/env bash
# Create .venv with the pinned OpenMMLab stack and mmpola (idempotent).
#
# mmcv 2.1.0 ships only as source: it is compiled here with its ops
# (MMCV_WITH_OPS=1) against the installed torch, and the wheel is kept in
#   $MMPOLA_CACHE/mmcv/mmcv-<ver>_torch-<ver>_py<ver>_<cpu|cuXYZ>/
# so a second setup reuses it. A wheel whose key does not match the current
# torch/Python/device is never used; an installed mmcv whose ops do not load
# (e.g. built against another torch) is detected and replaced.
#
# Environment:
#   PYTHON        interpreter for the venv (default: python3)
#   VENV          venv path (default: .venv)
#   MMPOLA_CACHE  wheel cache (default: ~/.cache/mmpola)
#   FORCE_CUDA=1  build mmcv's CUDA ops (GPU machine with nvcc; set CUDA_HOME
#                 and TORCH_CUDA_ARCH_LIST, e.g. "8.0;9.0", as needed)
#   MAX_JOBS      parallel compile jobs (default: number of cores)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CACHE=${MMPOLA_CACHE:-$HOME/.cache/mmpola}
MMCV_VERSION=2.1.0
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
STAMP="$VENV/.mmpola-setup"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Everything that decides the environment's content goes into the stamp.
want_stamp() {
    cat requirements/runtime.txt requirements/tests.txt pyproject.toml "$0" \
        | sha256sum | cut -d' ' -f1
}

# Does the installed mmcv load its compiled ops? (An mmcv built against
# another torch fails here with an undefined symbol.) Quiet unless $1=loud.
mmcv_ops_ok() {
    local out
    out=$("$VENV/bin/python" - 2>&1 <<'EOF'
import torch, mmcv
from mmcv.ops import nms
assert mmcv.__version__ == '2.1.0', mmcv.__version__
b = torch.tensor([[0., 0., 1., 1.]]); s = torch.tensor([1.])
nms(b, s, 0.5)
EOF
    ) && return 0
    [ "${1:-}" = loud ] && printf '%s\n' "$out" | tail -n 3 | sed 's/^/[setup]   /'
    return 1
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(want_stamp)" ] && mmcv_ops_ok; then
    log "environment up to date ($VENV)"
    exit 0
fi

# 1. venv + torch ---------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$(cd "$VENV" && pwd)/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
if ! "$PY" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
    log "installing $TORCH_SPEC"
    "${PIP[@]}" install $TORCH_SPEC
fi
# Build requirements of mmcv's setup.py: pkg_resources (setuptools < 82),
# torch's own setuptools >= 77; ninja for a parallel build.
"${PIP[@]}" install "setuptools>=77,<82" wheel ninja packaging numpy

# 2. mmcv with ops, from the keyed wheel cache ----------------------------
KEY=$("$PY" - <<EOF
import os, sys, torch
cuda = os.environ.get('FORCE_CUDA') == '1' or torch.cuda.is_available()
dev = 'cu' + torch.version.cuda.replace('.', '') if (cuda and torch.version.cuda) else 'cpu'
print(f'mmcv-$MMCV_VERSION'
      f'_torch-{torch.__version__.split("+")[0]}'
      f'_py{sys.version_info.major}{sys.version_info.minor}_{dev}')
EOF
)
WHEEL_DIR="$CACHE/mmcv/$KEY"

build_mmcv() {
    local work
    work=$(mktemp -d)
    log "compiling mmcv $MMCV_VERSION with ops for $KEY (15-25 min on 2 cores)"
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$work"
    tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
    local src="$work/mmcv-$MMCV_VERSION"
    # torch >= 2.14 headers require C++20; mmcv 2.1.0 hard-codes C++17.
    if "$PY" -c "import torch,sys; from packaging.version import Version as V; sys.exit(0 if V(torch.__version__.split('+')[0]) >= V('2.14') else 1)"; then
        sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
        log "raised mmcv's C++ standard to C++20 for this torch"
    fi
    ( cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "$PY" -m pip --disable-pip-version-check wheel -q \
        --no-build-isolation --no-deps . -w "$work/dist" ) \
        || die "mmcv build failed (see output above)"
    mkdir -p "$WHEEL_DIR"
    mv "$work"/dist/mmcv-*.whl "$WHEEL_DIR"/
    rm -rf "$work"
}

# Installs the cached wheel, then mmcv's own run-time dependencies
# (mmengine, opencv, ...), which importing it needs.
install_cached_mmcv() {
    local whl
    whl=$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -n1)
    [ -n "$whl" ] || return 1
    log "installing cached $(basename "$whl") ($KEY)"
    "${PIP[@]}" install --force-reinstall --no-deps "$whl"
    "${PIP[@]}" install "$whl" "mmengine==0.10.7"
}

if mmcv_ops_ok; then
    log "mmcv $MMCV_VERSION with ops already installed and loading"
else
    if "$PY" -c "import mmcv" 2>/dev/null; then
        log "installed mmcv does not load its ops with this torch" \
            "(built against another torch?): replacing it"
        mmcv_ops_ok loud || true
        "${PIP[@]}" uninstall -y mmcv
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
log "installing runtime and test requirements"
"${PIP[@]}" install -r requirements/runtime.txt -r requirements/tests.txt
"${PIP[@]}" install --no-deps --no-build-isolation -e .
mmcv_ops_ok || die "mmcv ops broken after installing the requirements"
"$PY" -c "import mmdet, mmseg, mmpretrain, mmpola" \
    || die "the OpenMMLab stack does not import; see the traceback above"
want_stamp > "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
