# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# XPUD_ONNXRUNTIME=cpu: the small CPU-only onnxruntime instead of onnxruntime-gpu (setup.py); a change reinstalls.
# The build not chosen is removed first: both in one environment overwrite each other's files.
GPU_HOST := $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m))
ORT_WANTED := $(if $(filter cpu,$(XPUD_ONNXRUNTIME)),onnxruntime,$(if $(or $(GPU_HOST),$(filter gpu,$(XPUD_ONNXRUNTIME))),onnxruntime-gpu,onnxruntime))
ORT_OTHER := $(filter-out $(ORT_WANTED),onnxruntime onnxruntime-gpu)
ORT_MARK := $(VENV)/.$(ORT_WANTED)

.PHONY: install run test lint typecheck proto bench clean

$(STAMP): pyproject.toml setup.py $(ORT_MARK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if $(PY) -m pip show -q $(ORT_OTHER) 2>/dev/null; then $(PY) -m pip uninstall -q -y onnxruntime onnxruntime-gpu; fi
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

$(ORT_MARK):
	mkdir -p $(VENV)
	rm -f $(VENV)/.onnxruntime $(VENV)/.onnxruntime-gpu
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/xpud up $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

# mypy reads the installed layout (the top-level folders are xpud.* subpackages), built into a scratch dir.
typecheck: $(STAMP)
	rm -rf build/typecheck build/lib
	$(PY) -m pip install -q --no-deps --target build/typecheck . >/dev/null
	cd build/typecheck && ../../$(PY) -m mypy --config-file ../../pyproject.toml -p xpud
	rm -rf build/typecheck build/lib

test: $(STAMP) lint typecheck
	$(PY) -m pytest

proto: $(STAMP)
	$(PY) proto/generate.py

bench: $(STAMP)
	$(PY) benchmarks/telemetry_tick.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
