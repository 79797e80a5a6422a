# Two commands matter: `make repro` (the main job) and `make test` (the tests).
# Both create .venv and install what is missing first, so they work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VEGA   := .cache/vega/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1
# DVC stages call `python -m pipeline.<stage>`: the venv's python, without activating it
export PATH := $(abspath $(BIN)):$(PATH)
PROFILE ?=

.PHONY: install system-packages vega repro test bench clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and on its own: the local CPU wheel, never the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

# Debian packages the tests use: PostgreSQL (Optuna on a real server), Chromium (the dashboards in a
# browser), npm (vega's scripts). Installed when missing, as root or through sudo; PostgreSQL without
# Debian's default cluster (the tests start throwaway servers of their own).
system-packages:
	@need=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	command -v npm >/dev/null 2>&1 || need="$$need npm"; \
	if [ -n "$$need" ]; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing Debian packages:$$need"; \
	  case "$$need" in *postgresql*) $$sudo mkdir -p /etc/postgresql-common/createcluster.d && \
	    echo "create_main_cluster = false" | $$sudo tee /etc/postgresql-common/createcluster.d/odt.conf >/dev/null;; esac; \
	  $$sudo apt-get update -q >/dev/null && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$need >/dev/null; \
	fi

# vega, vega-lite and vega-embed at the versions `dvc plots show`'s page asks a CDN for: the browser
# test serves them beside the page (no network here)
$(VEGA):
	rm -rf .cache/vega && mkdir -p .cache/vega
	cd .cache/vega && npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null
	cd .cache/vega && for p in vega-5.20.2 vega-lite-5.2.0 vega-embed-6.18.2; do \
	  mkdir $$p && tar -xzf $$p.tgz -C $$p --strip-components=1 && rm $$p.tgz; done
	touch $@

vega: $(VEGA)

repro: install
	test -d .dvc || $(BIN)/dvc init -q
	$(BIN)/dvc config core.analytics false
	$(if $(PROFILE),$(BIN)/python -m pipeline.profile $(PROFILE),test -f params.yaml || $(BIN)/python -m pipeline.profile quick)
	$(BIN)/dvc repro

test: install system-packages $(VEGA)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache
