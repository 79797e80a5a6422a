# Two commands matter: `make repro` (the main job) and `make test` (the tests).
# Both create .venv and install what is missing first, so they work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1
# DVC stages call `python -m pipeline.<stage>`: the venv's python, without activating it
export PATH := $(abspath $(BIN)):$(PATH)
PROFILE ?=

.PHONY: install repro test bench clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and on its own: the local CPU wheel, never the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

repro: install
	test -d .dvc || $(BIN)/dvc init -q
	$(BIN)/dvc config core.analytics false
	$(if $(PROFILE),$(BIN)/python -m pipeline.profile $(PROFILE),test -f params.yaml || $(BIN)/python -m pipeline.profile quick)
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache
