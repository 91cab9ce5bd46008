# mmpola: the two commands are `make demo` and `make test`.
#
#   make setup|test|test-fast [STACK=default|torch21|onedl] [TORCH=existing]
#     STACK=default  .venv          torch 2.14.1 + mmcv 2.1.0 + mmdet 3.3.0 ...
#     STACK=torch21  .venv-torch21  torch 2.1.2 (oldest supported)
#     STACK=onedl    .venv-onedl    torch 2.14.1 + the OneDL fork
#     TORCH=existing  build on the torch of $(PYTHON) instead of installing one
#                     (venv .venv-<stack>-existing-torch, --system-site-packages)
#   make gpu-wheels  the wheels the GPU check carries (.whl/, see docs/install.md)
STACK ?= default
TORCH ?= pinned
ifeq ($(TORCH),existing)
VENV ?= .venv-$(STACK)-existing-torch
else ifeq ($(STACK),default)
VENV ?= .venv
else
VENV ?= .venv-$(STACK)
endif
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q
TESTS ?= tests
export STACK TORCH VENV

.PHONY: setup test test-fast demo gpu-wheels gpu-check-cpu clean-venv

setup:  ## create $(VENV) with the pinned stack (mmcv compiled once, cached)
	bash tools/setup_env.sh

test: setup  ## setup, then the whole test suite
	$(PY) -m pytest $(TESTS) $(PYTEST_ARGS)

test-fast: setup  ## setup, then the suite without the tests marked slow
	$(PY) -m pytest $(TESTS) -m "not slow" $(PYTEST_ARGS)

demo: setup  ## setup, then Mask R-CNN + Pola-PVT-T on generated COCO data, 2 processes
	PYTHON=$(PY) bash tools/demo.sh

gpu-wheels: setup  ## .whl/: wheels for the GPU machine (cp312, no mmcv ops)
	PY=$(PY) bash tools/gpu_check.sh wheels .whl

gpu-check-cpu: setup  ## the GPU check's code path on the CPU at a tiny size
	$(PY) tools/gpu_check.py --device cpu --out gpu_out/cpu --sizes 64@2 \
		--graph eager --repeat 1

clean-venv:
	rm -rf $(VENV)
