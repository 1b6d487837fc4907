# Entry points. `make run` and `make test` each set everything up first (idempotent).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run test pull metrics exps flow sweep seeds mto-ablation report bench plan server deploy deploy-gpus worker ui dag profile-smoke \
	profile-cpu profile-gpu profile-gpu-check profile-paper

setup:
	@bash scripts/setup.sh

## The default pipeline (dvc repro on params.yaml).
run: setup
	dvc repro

## Style (ruff format, ruff check), then the test suite (set-up also installs the services its tests start: PostgreSQL).
test:
	@bash scripts/setup.sh test
	ruff format --check --quiet .
	ruff check --quiet .
	python -m pytest -q -n auto --dist loadgroup --no-loadscope-reorder

## The same pipeline as a Prefect flow (ephemeral mode); two stages at a time on 2 cores: ARGS="--jobs 2"
flow: setup
	python -m flows.pipeline $(ARGS)

## The MaskedKD sweep (teacher keep ratio x criterion) as DVC experiments; extra flags via ARGS="..."
sweep: setup
	python -m flows.sweep $(ARGS)

## More seeds of the pipeline, each in its own workspace, collected for the report; on 2 cores ARGS="--seeds 3 4 --jobs 2"
seeds: setup
	python -m flows.seeds $(ARGS)

## MTO's loss ablation (each loss alone, pairs, all three) as DVC experiments; ARGS="--objective simmim"
mto-ablation: setup
	python -m flows.mto_ablation $(ARGS)

## In a clone: the outputs from the DVC remote (dvc pull), or one line saying what to do when there is none
pull: setup
	python -m maskprune.remote

## The report alone (reports/report.html, reports/report.md) from the results as they stand (`make run` updates them)
report: setup
	dvc repro --single-item report

## The speed and cost benchmark suite -> results/benchmarks/<device>.{json,md}; ARGS="--parts pruning teacher"
bench: setup
	python -m benchmarks $(ARGS)

## Before launching: images, GMACs and GPU-hours per stage of a profile on a benchmarked GPU; PROFILE=paper GPU=nvidia-h200
PROFILE ?= paper
GPU ?= nvidia-h200
plan: setup
	python -m maskprune.plan $(PROFILE) --gpu $(GPU)

## A Prefect server on 127.0.0.1:4200 (API and UI); others use it with PREFECT_API_URL=http://127.0.0.1:4200/api
server: setup
	prefect server start --host 127.0.0.1 --port 4200

## With PREFECT_API_URL set: the process work pool maskprune and the deployments that run in this folder
LOCAL_DEPLOYMENTS := nightly seeds maskedkd mto-ablation
deploy: setup
	prefect work-pool create maskprune --type process --overwrite
	prefect --no-prompt deploy $(foreach name,$(LOCAL_DEPLOYMENTS),--name $(name))

## With PREFECT_API_URL set: the pool maskprune-gpus and `gpus`, pinned to origin and this (pushed) commit
deploy-gpus: setup
	prefect work-pool create maskprune-gpus --type process --overwrite
	env -u MASKPRUNE_WORKER_DIR prefect --no-prompt deploy --name gpus  # NOTE: each worker's own, never baked in here

## A process worker on POOL, after setting this machine's GPU limit (gpus-<hostname>) to GPUS slots.
## maskprune runs the deployments in this repository; maskprune-gpus runs `gpus` in a clone of its commit.
## maskprune-gpus clones into MASKPRUNE_WORKER_DIR (default ~/maskprune-runs), one folder per commit.
POOL ?= maskprune
GPUS ?= 1
worker: setup
	limit=$$(python -c 'from flows.gpu_slots import gpu_limit; print(gpu_limit())') && \
	  { prefect gcl update $$limit --limit $(GPUS) >/dev/null 2>&1 || prefect gcl create $$limit --limit $(GPUS); }
	export MASKPRUNE_WORKER_DIR="$${MASKPRUNE_WORKER_DIR:-$$HOME/maskprune-runs}" && mkdir -p "$$MASKPRUNE_WORKER_DIR" && \
	  prefect worker start --pool $(POOL)

## The MLflow UI on this repository's store at http://127.0.0.1:5000; prints the address of the runs table
ui: setup
	python -m maskprune.tracking.ui

## DVC's tables and graph on one screen each (python -m maskprune.show): dvc metrics show, dvc exp show, dvc dag
metrics: setup
	python -m maskprune.show metrics

exps: setup
	python -m maskprune.show experiments

dag: setup
	python -m maskprune.show dag

profile-smoke profile-cpu profile-gpu profile-gpu-check profile-paper: setup
	python -m maskprune.profile $(@:profile-%=%)
