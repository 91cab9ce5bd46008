# mmpola: the two commands are `make demo` and `make test`.
PY := .venv/bin/python
PYTEST_ARGS ?= -q

.PHONY: setup test demo clean-venv

setup:  ## create .venv with the pinned OpenMMLab stack (mmcv compiled once, cached)
	bash tools/setup_env.sh

test: setup  ## setup, then the whole test suite
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup  ## setup, then Mask R-CNN + Pola-PVT-T on generated COCO data, 2 processes
	bash tools/demo.sh

clean-venv:
	rm -rf .venv
