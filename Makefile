# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install run test lint typecheck proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

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
