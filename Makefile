# Two entry points (see README.md): `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch by default. On a GPU host, pick a CUDA build, e.g.
#   make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo run test lint install clean

# requirements/runtime.txt pins every runtime dependency but torch, requirements/registry.txt
# the registry extra's and requirements/model.txt the onnx and s3 extras', as the images install them.
$(VENV)/.installed: pyproject.toml requirements/runtime.txt requirements/registry.txt requirements/model.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c requirements/runtime.txt -c requirements/registry.txt -c requirements/model.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The whole system on the bundled example: three serve processes, the sidecar, traffic, reports.
demo: $(VENV)/.installed
	$(PY) -m demo $(DEMO_ARGS)

# serve alone on the bundled example.
run: $(VENV)/.installed
	$(VENV)/bin/serve --model-repository examples/models --http-port 8000 --grpc-port 8001 --metrics-port 8002

# Lint and types first (seconds), then the suite: a finding fails the run like a failing test.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff and mypy alone, as `make test` runs them.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache
