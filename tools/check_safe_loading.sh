#!/usr/bin/env bash
# Run mmpola's checkpoint-loading tests on another torch, without building
# the whole stack (mmcv-lite: the backbones need only mmcv's Python bricks).
#
#   bash tools/check_safe_loading.sh 2.5.1      # venv .venv-torch2.5.1
#
# The default stack (make test) and STACK=torch21 run the same tests as part
# of the whole suite.
set -euo pipefail
TORCH_VERSION=${1:?usage: tools/check_safe_loading.sh TORCH_VERSION}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=".venv-torch$TORCH_VERSION"
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "numpy<2" \
        "mmengine>=0.10.7,<0.11" "mmcv-lite==2.1.0" "opencv-python<4.12" \
        -r requirements/tests.txt "safetensors>=0.4"
fi
PYTHONPATH="$ROOT" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    -m "not slow" -W ignore tests/test_safe_loading.py \
    tests/test_checkpoint_schemes.py tests/test_fuzz_loading.py \
    tests/test_checkpoint.py
