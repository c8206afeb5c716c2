#!/usr/bin/env bash
# Sourced by scripts/repro.sh and scripts/test.sh: create or reuse the project virtual environment
# (.venv, or $SMOOTHGEO_VENV), install the pinned requirements when they changed, and make sure the
# Fashion-MNIST files are on the machine (Debian package where apt is usable; otherwise the data
# stage downloads them from their canonical source).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${SMOOTHGEO_VENV:-$ROOT/.venv}
PYTHON_BIN=${PYTHON:-$(command -v python3.11 || command -v python3)}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV with $PYTHON_BIN"
  "$PYTHON_BIN" -m venv "$VENV"
fi
stamp="$VENV/.smoothgeo-requirements"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing pinned requirements into $VENV (first run downloads PyTorch, a few minutes)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
  # papermill runs notebooks with `-k python3`: register this environment's kernel under that name
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (smoothgeo)" >/dev/null
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export MPLBACKEND=Agg

fmnist_debian=/usr/share/datasets/fashion-mnist
if [ ! -f data/raw/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ ! -f "$fmnist_debian/t10k-labels-idx1-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "[setup] apt-get failed; the data stage will try to download Fashion-MNIST instead"
  else
    echo "[setup] Fashion-MNIST not found locally; the data stage will download it"
  fi
fi
