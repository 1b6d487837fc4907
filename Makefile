# Entry points. `make run` and `make test` each set everything up first (idempotent).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run test flow sweep ui dag profile-smoke profile-cpu profile-gpu

setup:
	@bash scripts/setup.sh

## The default pipeline (dvc repro on params.yaml).
run: setup
	dvc repro

## The test suite.
test: setup
	python -m pytest -q

## The same pipeline as a Prefect flow (ephemeral mode).
flow: setup
	python -m flows.pipeline

## The MaskedKD sweep (teacher keep ratio x criterion) as DVC experiments; extra flags via ARGS="..."
sweep: setup
	python -m flows.sweep $(ARGS)

## The MLflow UI on the default store, at http://127.0.0.1:5000
ui: setup
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

dag: setup
	dvc dag

profile-smoke profile-cpu profile-gpu: setup
	python -m maskprune.profile $(@:profile-%=%)
