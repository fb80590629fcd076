# retina-sr: every target creates/updates .venv first, so a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
PYTEST_ARGS ?=

# the study's own images for the preprocessing benchmark (after `make repro`); any folder of photographs works
BENCH_IMAGES ?= data/raw

.PHONY: venv params repro snake test test-fast test-cluster lint ui bench clean-outputs

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	# opencv-contrib-python-headless (cv2.dnn_superres) replaces opencv-python-headless: both own cv2/
	if $(BIN)/python -m pip show -q opencv-python-headless >/dev/null 2>&1; then \
		$(BIN)/python -m pip uninstall -y -q opencv-python-headless opencv-contrib-python-headless; fi
	# the pipeline (DVC, Snakemake, Hydra, MLflow, Kaggle), the tests and the linters; `pip install -e .` alone
	# is the inference API
	$(BIN)/python -m pip install --quiet -e '.[pipeline,test,dev]'
	touch $@

venv: $(BIN)/.installed

# params.yaml from conf/ (the Hydra composition `dvc exp run` writes; the default study: demo)
params: venv
	$(BIN)/retina-sr params compose --out params.yaml

# the whole study with DVC (default params: offline demo study)
repro: params
	$(BIN)/retina-sr tracking init
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

# the same DAG with Snakemake
snake: venv
	$(BIN)/retina-sr tracking init
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores 8 evaluate

# everything but the cluster tests (they start Slurm, S3 and MLflow servers as root: `make test-cluster`)
test: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m "not cluster" $(PYTEST_ARGS)

test-fast: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# a real single-node Slurm cluster (Debian packages, root), a local S3 server and an MLflow tracking
# server: about 6-10 min on 2 cores; run before changing orchestration or tracking (see README)
test-cluster: venv
	$(BIN)/python -m pip install --quiet -e '.[cluster]'
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

# ruff on the whole tree, mypy on the package (both configured in pyproject.toml)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

ui: venv
	@MLFLOW_TRACKING_URI='$(MLFLOW_TRACKING_URI)' $(BIN)/python -c "import os; from mlflow import MlflowClient; from retina_sr.tracking import UI_QUERY; \
	exps = [e for e in MlflowClient(os.environ['MLFLOW_TRACKING_URI']).search_experiments() if e.name != 'Default']; \
	print('MLflow UI, each experiment on its runs table (model-training layout):'); \
	[print(f'  {e.name}: http://127.0.0.1:5000/#/experiments/{e.experiment_id}{UI_QUERY}') for e in exps]; \
	exps or print(f'  http://127.0.0.1:5000/#/experiments{UI_QUERY} (no study run yet)')" 2>/dev/null || true
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

bench: venv
	$(BIN)/retina-sr bench-preprocess --images $(BENCH_IMAGES)
	$(BIN)/retina-sr bench-train --sizes demo,full
	$(BIN)/retina-sr bench --arch F16D3 --arch F64D10 --sizes 1920x1080 --zooms 4 --repeats 3 --json bench-zoom.json
