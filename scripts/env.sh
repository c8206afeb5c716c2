#!/usr/bin/env bash
# Create or reuse the project virtual environment (.venv, or $SMOOTHGEO_VENV), install the pinned requirements
# when they changed, make sure the Fashion-MNIST files are on the machine (Debian package where apt is usable;
# otherwise the data stage downloads them from their canonical source), and put the environment on PATH.
#
# Two ways to use it:
#   source scripts/env.sh      in your own shell (then `dvc repro`, `jupyter lab`, ...): only PATH changes;
#                              your shell options and working directory stay as they were, and a failure
#                              returns an error instead of closing the terminal.
#   scripts (repro.sh, test.sh) source it too: there it also switches to strict mode (set -euo pipefail)
#                              and changes to the repository root, as those scripts expect.
# It does not set MPLBACKEND: notebook kernels then show figures inline, and scripts without a display use
# matplotlib's non-interactive backend on their own.

_smoothgeo_env() {
  local root venv python_bin status
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
  venv=${SMOOTHGEO_VENV:-$root/.venv}
  python_bin=${PYTHON:-$(command -v python3.11 || command -v python3)}
  # the set-up runs in a subshell: strict mode and `cd` stay inside it
  (
    set -euo pipefail
    cd "$root"
    if [ ! -x "$venv/bin/python" ]; then
      echo "[setup] creating virtual environment $venv with $python_bin"
      "$python_bin" -m venv "$venv"
    fi
    stamp="$venv/.smoothgeo-requirements"
    want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
      echo "[setup] installing pinned requirements into $venv (first run downloads PyTorch, a few minutes)"
      "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
      "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e .
      # papermill runs notebooks with `-k python3`: register this environment's kernel under that name
      "$venv/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (smoothgeo)" >/dev/null
      echo "$want" > "$stamp"
    fi
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
  )
  # (not `( ... ) || ...`: bash ignores set -e inside a list like that)
  status=$?
  if [ "$status" != 0 ]; then
    echo "[setup] failed (see above); nothing was changed in this shell" >&2
    return "$status"
  fi
  case ":$PATH:" in
    *":$venv/bin:"*) ;;
    *) export PATH="$venv/bin:$PATH" ;;
  esac
  if [ "${MPLBACKEND:-}" = Agg ] || [ "${MPLBACKEND:-}" = agg ]; then
    unset MPLBACKEND  # left over from an older env.sh: it would hide every figure in notebook kernels
  fi
  SMOOTHGEO_ROOT=$root
  export SMOOTHGEO_ROOT
}

if [[ $- == *i* ]]; then
  # sourced from an interactive shell: change nothing but the environment variables
  _smoothgeo_env
  _smoothgeo_status=$?
  unset -f _smoothgeo_env
  return "$_smoothgeo_status"
fi
# sourced by a script (or run directly): strict mode and the repository root as working directory
set -euo pipefail
_smoothgeo_env
unset -f _smoothgeo_env
cd "$SMOOTHGEO_ROOT"
