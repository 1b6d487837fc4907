#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with maskprune and its pipeline tools, and the default
# dataset (Fashion-MNIST from Debian's dataset-fashion-mnist); with the argument `test`, also the
# services the tests start (PostgreSQL). Safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi

# Reinstall only when the dependency list changed.
stamp="$VENV/.maskprune-deps"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing maskprune and its dependencies (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[pipeline,test]"
  echo "$want" > "$stamp"
fi

# The default dataset. Only needed when params.yaml points at the Debian location.
root=$("$VENV/bin/python" -c "import yaml; print(yaml.safe_load(open('params.yaml'))['data']['root'])")
if [ "$root" = "/usr/share/datasets/fashion-mnist" ] && [ ! -f "$root/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or set data.root in params.local.yaml (then make profile-cpu) to a folder with its four IDX .gz files" >&2
    exit 1
  fi
fi
# `dvc plots show` / `dvc plots diff` pages that work offline: DVC's own page loads vega, vega-lite
# and vega-embed from a CDN; this template inlines the same versions, from the npm registry's packages.
page=.dvc/plots/offline.html
if [ ! -s "$page" ]; then
  if command -v npm >/dev/null; then
    echo "setup: building the offline plots page ($page: vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2 from npm)"
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null)
    {
      printf '<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<meta charset="utf-8">\n<title>DVC Plot</title>\n'
      for pkg in vega-5.20.2 vega-lite-5.2.0 vega-embed-6.18.2; do
        printf '<script type="text/javascript">\n'
        tar xzOf "$work/$pkg.tgz" "package/build/${pkg%-*}.min.js"
        printf '\n</script>\n'
      done
      printf '<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
    } > "$work/page.html"
    mv "$work/page.html" "$page"
    rm -rf "$work"
  else
    echo "setup: npm is missing, so \`dvc plots show\` pages load vega from the network: install Node.js's npm (Debian: apt-get install npm) and rerun" >&2
  fi
fi
if [ -s "$page" ]; then
  "$VENV/bin/dvc" config --local plots.html_template plots/offline.html
fi
# `setup.sh test`: the services the test suite starts (on 127.0.0.1) from Debian's packages.
if [ "${1:-}" = "test" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing PostgreSQL for the tracking-server tests (apt-get install postgresql)"
    apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null
  else
    echo "setup: PostgreSQL is missing, so the tracking-server tests will fail: run 'sudo apt-get install postgresql'" >&2
  fi
fi
if [ "${1:-}" = "test" ] && ! command -v chromium-headless-shell >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing headless Chromium for the MLflow UI test (apt-get install chromium-headless-shell)"
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium-headless-shell >/dev/null
  else
    echo "setup: headless Chromium is missing, so the MLflow UI test will fail: run 'sudo apt-get install chromium-headless-shell'" >&2
  fi
fi
echo "setup: ready ($("$VENV/bin/python" --version), $root)"
