# Two entry points: `make quickstart` (the main job) and `make test` (the whole suite).
# Both install into .venv first; GLUE_DIR defaults to the data folder beside the checkout.
PYTHON ?= python3
VENV ?= .venv
GLUE_DIR ?= $(abspath ../shared/data/glue)
export GLUE_DIR
export HF_HUB_OFFLINE ?= 1

.PHONY: install quickstart test lint gpu-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/python cli.py compress recipes/quickstart.yaml

test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Everything that needs a GPU (CUDA tests, quickstart in bf16, GPU bench rows): gpu-check/gpu_check.json
gpu-check: install
	$(VENV)/bin/python -m pipelines.gpu_check --out gpu-check
