#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with the model stack alone (no DVC, MLflow,
# Prefect, network or dataset package):
#
#   scripts/gpu_check.sh --prepare     # here, with network: wheels -> .whl/, Fashion-MNIST -> .gpu-check/
#   scripts/gpu_check.sh OUTDIR        # there: environment, paper-scale benchmarks, the gpu-check pipeline
#
# OUTDIR gets environment.json, benchmarks/<gpu>-paper.{json,md}, pipeline/ (every stage's outputs
# and stages.json with their seconds) and, at its top, report.md, summary.json and evaluate.json.
# On one H200 about 6 minutes by its measured parts (environment 17 s, benchmarks 45 s, pipeline
# 290 s of stages: results/gpu-check/nvidia-h200/README.md); without a GPU it runs the same steps on
# the smoke profile (about 2.5 minutes on 2 cores). Settings (environment variables): PROFILE
# (gpu-check; smoke without a GPU), BENCH_ARGS (the benchmark's arguments), DATA_ROOT (default:
# .gpu-check/fashion-mnist when present, else the profile's data.root), SETS (further params
# values for the pipeline, space-separated KEY=VALUE items without spaces inside, as `python -m
# stages --set` takes them, e.g. SETS="prune.inits=[masked] prune.keep_rates=[0.5]"), PYTHON
# (python3). Missing Python packages are installed from .whl/ into OUTDIR/site when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=.whl
DATA_COPY=.gpu-check/fashion-mnist

usage() { echo "usage: scripts/gpu_check.sh OUTDIR | --prepare" >&2; exit 2; }
[ $# -eq 1 ] || usage

if [ "$1" = "--prepare" ]; then
  # The packages the stages need beyond the GPU image's (torch, timm, numpy, pandas, ...), as
  # CPython 3.12 x86-64 wheels, at the versions this venv runs.
  mkdir -p "$WHEELS" "$DATA_COPY"
  pins=$("$PYTHON" - <<'EOF'
import importlib.metadata as m
print(" ".join(f"{d}=={m.version(d)}" for d in
      ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions", "tabulate")))
EOF
)
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" $pins
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$DATA_COPY"/
  echo "gpu_check: prepared $WHEELS ($(du -sh "$WHEELS" | cut -f1)) and $DATA_COPY ($(du -sh "$DATA_COPY" | cut -f1)); carry both"
  exit 0
fi

OUTDIR=$1
case "$OUTDIR" in -*) usage ;; esac
if [ -e "$OUTDIR" ] && [ -n "$(ls -A "$OUTDIR")" ]; then
  echo "gpu_check: $OUTDIR is not empty: remove it or name a new folder" >&2
  exit 2
fi
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
started=$(date +%s)
step() { echo "gpu_check: [$(($(date +%s) - started))s] $*"; }

step "environment"
if ! "$PYTHON" -c "import pydantic, tabulate" 2>/dev/null && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$OUTDIR/site" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$OUTDIR/site"
  step "installed $(ls "$WHEELS" | wc -l) wheels from $WHEELS"
fi
"$PYTHON" -m maskprune.environment --out "$OUTDIR/environment.json"

cuda=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
if [ -z "${BENCH_ARGS+x}" ]; then
  if [ "$cuda" = 1 ]; then
    # NOTE: compiled modes cost about 60 s of compilation per model on an H200 machine (measured):
    # run them apart, e.g. BENCH_ARGS="--preset paper --parts teacher pruning --modes compile-graph"
    BENCH_ARGS="--preset paper --parts teacher pruning --modes eager graph --budget-s 120"
  else
    # no GPU (the suite's test of this script): the same steps at the smoke scale
    BENCH_ARGS="--profile smoke --parts teacher pruning --modes eager --batch 4 --warmup 1 --repeats 2"
  fi
fi
step "benchmarks: $BENCH_ARGS"
# shellcheck disable=SC2086
"$PYTHON" -m benchmarks $BENCH_ARGS --out "$OUTDIR/benchmarks" || step "benchmarks FAILED (exit $?); the pipeline still runs"

if [ "$cuda" = 1 ]; then PROFILE=${PROFILE:-gpu-check}; else PROFILE=${PROFILE:-smoke}; fi
sets=()
if [ -n "${DATA_ROOT:-}" ]; then
  sets=(--set "data.root=$DATA_ROOT")
elif [ -d "$DATA_COPY" ]; then
  sets=(--set "data.root=$(cd "$DATA_COPY" && pwd)")
fi
read -r -a extra <<<"${SETS:-}"
for item in "${extra[@]}"; do sets+=(--set "$item"); done
step "pipeline: profile $PROFILE ${sets[*]}"
"$PYTHON" -m stages --workspace "$OUTDIR/pipeline" --profile "$PROFILE" "${sets[@]}"
cp "$OUTDIR/pipeline/reports/report.md" "$OUTDIR/pipeline/reports/summary.json" "$OUTDIR/"
cp "$OUTDIR/pipeline/metrics/evaluate.json" "$OUTDIR/evaluate.json"
step "done: $OUTDIR"
