#!/usr/bin/env bash
# The main job. `bash scripts/repro.sh` runs `dvc repro` on the default profile (params.yaml) in this checkout.
# `bash scripts/repro.sh PROFILE` (smoke, cifar10, flowers, imagenet) runs the same pipeline with
# profiles/PROFILE.yaml in its own workspace runs/PROFILE/, so the committed default results stay untouched.
# Extra arguments go to `dvc repro` (e.g. `bash scripts/repro.sh default robust_training`).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
profile=${1:-default}
shift || true
if [ "$profile" = default ]; then
  dvc repro "$@"
  if [ -f results/SUMMARY.md ]; then  # copy the generated tables and figure links into README.md
    python -m smoothgeo.summary --results results --out results/SUMMARY.md --readme README.md >/dev/null
  fi
  exit 0
fi
if [ ! -f "profiles/$profile.yaml" ]; then
  echo "unknown profile '$profile': choose default or one of: $(ls profiles | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  exit 2
fi
ws="runs/$profile"
echo "[repro] profile $profile in workspace $ws"
mkdir -p "$ws"
# copy the project's files (tracked and new, not ignored) into the workspace; keep its outputs and cache
git ls-files -co --exclude-standard -z | grep -zv '^runs/' | tar --null -T - -cf - | tar -xf - -C "$ws"
tar -cf - .dvc/config | tar -xf - -C "$ws"
cp "profiles/$profile.yaml" "$ws/params.yaml"
cd "$ws"
dvc config --local core.no_scm true
dvc repro "$@"
echo "[repro] results of profile $profile are in $ws/results"
