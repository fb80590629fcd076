# retina-sr: every target creates/updates .venv first, so a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
PYTEST_ARGS ?=

.PHONY: venv repro snake test test-fast ui bench clean-outputs

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	# opencv-contrib-python-headless (cv2.dnn_superres) replaces opencv-python-headless: both own cv2/
	if $(BIN)/python -m pip show -q opencv-python-headless >/dev/null 2>&1; then \
		$(BIN)/python -m pip uninstall -y -q opencv-python-headless opencv-contrib-python-headless; fi
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# the whole study with DVC (default params: offline demo study)
repro: venv
	$(BIN)/retina-sr tracking init
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

# the same DAG with Snakemake
snake: venv
	$(BIN)/retina-sr tracking init
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores 8 evaluate

test: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

ui: venv
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

bench: venv
	$(BIN)/retina-sr bench-preprocess
	$(BIN)/retina-sr bench-train --sizes demo,full
	$(BIN)/retina-sr bench --arch F16D3 --arch F64D10 --sizes 1920x1080 --zooms 4 --repeats 3 --json bench-zoom.json
