#!/usr/bin/env bash
# The main job. `bash scripts/repro.sh` runs `dvc repro` on the default profile (params.yaml) in this checkout.
# `bash scripts/repro.sh PROFILE` (smoke, cifar10, flowers, imagenet) runs the same pipeline with
# profiles/PROFILE.yaml in its own workspace runs/PROFILE/, so the committed default results stay untouched.
# `bash scripts/repro.sh PROFILE-toy` (cifar10-toy, flowers-toy, imagenet-toy) runs the toy version of a
# paper-scale profile (smoothgeo.pipeline.profiles: synthetic stand-in data, tiny sizes) in runs/PROFILE-toy/.
# Extra arguments go to `dvc repro` (e.g. `bash scripts/repro.sh default notebook@robust_training`).
#
# Default profile, shipped outputs: the committed default run's DVC-cached outputs (checkpoints, attack records)
# are kept in store/, a DVC remote inside the repository (`shipped`, .dvc/config; filled by scripts/ship.sh).
# `bash scripts/repro.sh` first pulls what the store has (`dvc pull --allow-missing -r shipped`, offline; another
# remote: SMOOTHGEO_REMOTE=NAME, or make it the default remote, README "Shared remote"), then
# runs `dvc repro`: stages whose code, params and inputs are unchanged and whose outputs are now in place are
# skipped, so nothing is trained; the data stage re-creates data/raw (not shipped: a copy of the Fashion-MNIST
# files); missing outputs (notebooks, claims) are regenerated. `--retrain` pulls nothing: whatever is not in
# the checkout is computed (in a fresh clone: every model, about 40 minutes; see the lanes below).
# Sweeps: `dvc exp run -S KEY=VALUE` at the repository root (default profile). Profile workspaces are not git
# repositories, so `dvc exp` cannot run there; an -S argument here says what to run instead.
#
# Profile workspaces (runs/PROFILE/) are separate DVC projects that hold only what is theirs:
#   params.yaml         copied from profiles/PROFILE.yaml on the first run, then the workspace's own (see below)
#   dvc.lock, data/, results/, .dvc/ (own cache, tmp, config.local with core.no_scm; .dvc/config links to ours)
# Everything else (dvc.yaml, lib/, notebooks/, .dvcignore, ... every top-level entry of this checkout) is a
# relative symlink into the repository, so stages run the repository's code and DVC hashes that code: nothing
# is copied, a workspace never reads or writes another profile's (or the default run's) lock, results,
# checkpoints or cache, and works with whatever dvc.yaml holds. Before running, every stage output of the
# workspace is checked to resolve inside the workspace (a stage that would write through a symlink into the
# repository stops the run with a message).
# DVC then gives the rest: a rerun with nothing changed runs nothing; dvc.lock is updated after each stage, so
# a killed run resumes with the stages it had not finished (DVC clears a dead run's own lock entries).
#
# Names: the profile name, and every run, model, setting and profile name of the params file, must follow the name
# rule of smoothgeo.store.names (letters, digits and _ . + -, starting with a letter or digit), checked before DVC
# runs anything: dvc.yaml pastes those names into shell commands and output paths. Stage outputs with an absolute
# path or a '..' part are refused, whatever they resolve to.
#
# Concurrency: the run holds an exclusive flock on <workspace>/.dvc/tmp/repro.sh.lock (the root's for the
# default profile) for its whole duration, taken before anything else is touched; a second call for the same
# workspace refuses at once (exit 75) and changes nothing; without the flock command the run stops (exit 69)
# and says so. Different profiles may run at the same time.
#
# Workspace params: runs/PROFILE/.profile-base.yaml keeps the profile as last copied. If profiles/PROFILE.yaml
# changes and the workspace's params.yaml is unedited, the new profile is copied in; if you edited
# runs/PROFILE/params.yaml, your edits are kept and a note says the profile changed (delete the workspace's
# params.yaml to start again from the profile).
#
# SMOOTHGEO_NO_SETUP=1 skips scripts/env.sh (environment set-up): dvc, python and papermill must then be on PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${SMOOTHGEO_NO_SETUP:-}" ]; then
  cd "$ROOT"
else
  source "$ROOT/scripts/env.sh"
fi
retrain=""
if [ "${1:-}" = --retrain ]; then retrain=1; shift; fi
profile=${1:-default}
shift || true
if [ "${1:-}" = --retrain ]; then retrain=1; shift; fi
for arg in "$profile" "$@"; do  # a parameter sweep (`-S KEY=VALUE`) is `dvc exp run`, not `dvc repro`
  case "$arg" in
    -S|-S?*|--set-param|--set-param=*)
      if [ "$profile" = default ] || [ "$profile" = "$arg" ]; then
        echo "[repro] a parameter sweep is a DVC experiment: run \`dvc exp run -S KEY=VALUE\` at the repository" \
             "root (after one \`bash scripts/repro.sh\`, which puts the shipped checkpoints in place)" >&2
      else
        echo "[repro] runs/$profile is not a git repository, so \`dvc exp run -S\` cannot run there: set the value in" \
             "runs/$profile/params.yaml and run \`bash scripts/repro.sh $profile\` (only the stages it touches run)" >&2
      fi
      exit 2 ;;
  esac
done

# a profile name becomes a folder and a DVC workspace: the name rule of smoothgeo.store.names
# (^[A-Za-z0-9][A-Za-z0-9_.+-]*$: no '/', no leading '.' or '-', no spaces, ';' or '$')
alnum=ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789  # spelled out: ranges depend on the locale
case "$profile" in
  [$alnum]*) case "$profile" in *[!${alnum}_.+-]*) bad_profile=1 ;; *) bad_profile= ;; esac ;;
  *) bad_profile=1 ;;
esac
if [ -n "$bad_profile" ]; then
  echo "invalid profile name '$profile': use letters, digits and _ . + - , starting with a letter or digit" >&2
  exit 2
fi

check_params() {  # $1: params file; every run, model, setting and profile name must follow the name rule
  # (dvc.yaml pastes them into shell commands), and no YAML key may repeat: refuse before DVC runs anything
  python -c 'import sys
from smoothgeo.store.atomic import load_params
try:
    load_params(sys.argv[1])
except (ValueError, FileNotFoundError) as exc:
    sys.exit(f"[repro] {exc}")' "$1"
}

lock_or_refuse() {  # $1: lock file; holds fd 9 until this script (and the processes it starts) exit
  if ! command -v flock >/dev/null 2>&1; then
    echo "[repro] the 'flock' command is not installed (it comes with util-linux: apt-get install util-linux);" \
         "repro.sh needs it to keep two runs out of one workspace. Nothing was changed." >&2
    exit 69
  fi
  exec 9>>"$1"
  if ! flock -n 9; then
    echo "[repro] another scripts/repro.sh run is using $(dirname "$(dirname "$(dirname "$1")")") (lock $1);" \
         "nothing was changed. Wait for it to finish, or stop it first." >&2
    exit 75
  fi
}

# --retrain (after the profile name, or first for the default profile): run the expensive stage groups (training,
# attacks, measures) in two single-thread lanes first (smoothgeo.pipeline.lanes: each stage's own command, then
# `dvc commit`; the same bytes as `dvc repro`, about 1.5x faster on 2 cores), then `dvc repro` for the rest.
lanes() {
  python -m smoothgeo.pipeline.lanes --jobs "${SMOOTHGEO_LANES:-2}" data train_scratch train_finetune attack measure
}
# the shipped outputs (default profile without --retrain): pull what store/ has, then name what it lacks (their
# stages will run); a pull that would overwrite changed copies in the checkout stops the run instead
pull_shipped() {  # from $SMOOTHGEO_REMOTE, else the default remote (shipped; README, "Shared remote")
  local log=.dvc/tmp/repro-pull.log remote
  remote=${SMOOTHGEO_REMOTE:-$(dvc config core.remote 2>/dev/null || true)}
  if [ -z "$remote" ] || ! dvc remote list 2>/dev/null | grep -q "^$remote[[:space:]]"; then
    echo "[repro] no DVC remote${remote:+ '$remote'} in .dvc/config: nothing pulled"
    return 0
  fi
  if [ "$remote" = shipped ]; then
    echo "[repro] pulling the shipped checkpoints and attack records from store/ (DVC remote 'shipped', offline)"
  else
    echo "[repro] pulling the cached checkpoints and attack records from DVC remote '$remote'"
  fi
  if ! dvc pull --allow-missing -r "$remote" >"$log" 2>&1; then
    cat "$log" >&2
    echo "[repro] dvc pull failed (above), so nothing was run. Either store/ lacks objects that dvc.lock names" \
         "(\`bash scripts/ship.sh --check\` lists them; \`bash scripts/repro.sh --retrain\` recomputes them), or" \
         "this checkout has changed copies of shipped outputs (keep them with --retrain, or restore the shipped" \
         "ones with \`dvc checkout --force\` and run again)." >&2
    exit 1
  fi
  grep -v -e '^WARNING: Some of the cache files' -e '^md5: ' "$log" | tail -n 1 | sed 's/^/[repro] dvc pull: /'
  python - <<'PY'
from pathlib import Path

from dvc.repo import Repo

with Repo(".") as repo:
    missing = sorted({stage.addressing.split("@")[0] + ("@..." if "@" in stage.addressing else "")
                      for stage in repo.index.stages for out in stage.outs
                      if out.use_cache and out.can_push and out.hash_info and out.hash_info.value  # in dvc.lock
                      and not Path(str(out.fs_path)).exists()})
if missing:
    print("[repro] not in store/ nor in this checkout, so these stages will run: " + ", ".join(missing))
PY
}

if [ "$profile" = default ]; then
  mkdir -p "$ROOT/.dvc/tmp"
  lock_or_refuse "$ROOT/.dvc/tmp/repro.sh.lock"
  check_params params.yaml
  if [ -n "$retrain" ]; then lanes; else pull_shipped; fi
  dvc repro "$@"
  if [ -f results/SUMMARY.md ]; then  # copy the generated tables and figure links into README.md
    python -m smoothgeo.pipeline.summary report --results results --readme README.md
  fi
  exit 0
fi
# PROFILE-toy (e.g. cifar10-toy): profiles/PROFILE.yaml shrunk by `python -m smoothgeo.pipeline.profiles toy` (synthetic
# stand-in data, tiny sizes, random weights), generated into the workspace on every run
toy_of=""
if [ ! -f "profiles/$profile.yaml" ] && [ "${profile%-toy}" != "$profile" ] && [ -f "profiles/${profile%-toy}.yaml" ]; then
  toy_of="profiles/${profile%-toy}.yaml"
fi
if [ ! -f "profiles/$profile.yaml" ] && [ -z "$toy_of" ]; then
  choices=$(ls profiles | sed 's/\.yaml$//' | tr '\n' ' ')
  echo "unknown profile '$profile': choose default or one of: $choices(or NAME-toy for the toy version of" \
       "profile NAME, e.g. cifar10-toy)" >&2
  exit 2
fi
if grep -q '${models}' dvc.yaml && ! grep -q '^models:' "${toy_of:-profiles/$profile.yaml}"; then
  echo "profile '$profile' predates the current pipeline (it has no 'models', 'attacks', 'measures' and" \
       "'comparisons' sections), so dvc.yaml cannot run it; port it like profiles/cifar10.yaml" >&2
  exit 2
fi
ws="runs/$profile"
mkdir -p "$ws/.dvc/tmp"
lock_or_refuse "$ws/.dvc/tmp/repro.sh.lock"
echo "[repro] profile $profile in workspace $ws"
if [ -n "$toy_of" ]; then
  python -m smoothgeo.pipeline.profiles toy "$toy_of" "$ws/.profile-source.yaml" --name "$profile"
fi

# entries that belong to the workspace; every other top-level entry of the checkout is linked
# (store: .dvc/config's remote 'shipped' is the relative path ../store, so in a workspace it names runs/PROFILE/store,
# the workspace's own, never the default run's store/)
own=" params.yaml dvc.lock data results runs store .dvc .git .venv .profile-base.yaml .profile-source.yaml "
top_entries() {  # the checkout's top-level entries, NUL-separated (names with spaces or newlines stay whole)
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -z -co --exclude-standard | cut -z -d/ -f1 | sort -zu
  else
    find "$ROOT" -mindepth 1 -maxdepth 1 -printf '%f\0'
  fi
}
while IFS= read -r -d '' e; do
  case "$own" in *" $e "*) continue ;; esac
  target="../../$e"
  if [ -L "$ws/$e" ]; then
    [ "$(readlink "$ws/$e")" = "$target" ] && continue
    rm "$ws/$e"
  elif [ -e "$ws/$e" ]; then
    echo "[repro] $ws/$e exists and is not a link to the repository: $ws was made by an older repro.sh that" \
         "copied the project (and the default run's dvc.lock and results) into it, or $e was put there by hand." \
         "Move $ws away (or delete it) and run again; a workspace holds only params.yaml, dvc.lock, data/ and" \
         "results/ of its own." >&2
    exit 2
  fi
  ln -s "$target" "$ws/$e"
done < <(top_entries)
for l in "$ws"/* "$ws"/.[!.]*; do  # links to entries the repository no longer has
  if [ -L "$l" ] && [ ! -e "$l" ] && case "$(readlink "$l")" in ../../*) true ;; *) false ;; esac; then rm "$l"; fi
done
[ -e .dvc/config ] && [ ! -e "$ws/.dvc/config" ] && ln -s ../../../.dvc/config "$ws/.dvc/config"
[ -f "$ws/.dvc/config.local" ] || printf '[core]\n    no_scm = true\n' > "$ws/.dvc/config.local"
[ -f "$ws/.dvc/.gitignore" ] || printf '/config.local\n/tmp\n/cache\n' > "$ws/.dvc/.gitignore"

# params: the profile on first use; later only while the user has not edited the workspace's copy
prof="profiles/$profile.yaml" params="$ws/params.yaml" base="$ws/.profile-base.yaml"
[ -n "$toy_of" ] && prof="$ws/.profile-source.yaml"
if [ ! -f "$params" ]; then
  cp "$prof" "$params.smoothgeo-tmp" && mv "$params.smoothgeo-tmp" "$params"
  cp "$prof" "$base"
elif ! cmp -s "$prof" "$base" 2>/dev/null; then
  if [ -f "$base" ] && cmp -s "$params" "$base"; then
    echo "[repro] $prof changed; updating $params from it"
    cp "$prof" "$params.smoothgeo-tmp" && mv "$params.smoothgeo-tmp" "$params"
    cp "$prof" "$base"
  else
    echo "[repro] note: $params has your edits and $prof has changed since it was copied; using your" \
         "$params (to start again from the profile, delete it)" >&2
  fi
elif ! cmp -s "$params" "$prof"; then
  echo "[repro] using your edited $params (differs from $prof; delete it to start again from the profile)"
fi

cd "$ws"
check_params params.yaml
# every output must resolve inside the workspace (never through a link into the repository); the folders
# that hold outputs are created (a fresh workspace has none, and papermill does not create its output folder)
python - <<'EOF'
import os, sys
from dvc.repo import Repo

ws = os.path.realpath(".")
bad, folders = [], set()
with Repo(".") as repo:
    for stage in repo.index.stages:
        for out in stage.outs:
            path = str(out.def_path)
            parts = path.split("/")
            # an absolute path or a '..' part is refused as such (os.path.join(ws, "", "etc") would hide the former)
            real = os.path.realpath(os.path.join(ws, path))
            if os.path.isabs(path) or ".." in parts or os.path.commonpath([ws, real]) != ws or any(
                    os.path.islink(os.path.join(ws, *parts[:i + 1])) for i in range(len(parts))):
                bad.append(f"{stage.addressing}: {out.def_path}")
            elif len(parts) > 1:
                folders.add(os.path.join(ws, *parts[:-1]))
if not bad:
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
if bad:
    sys.exit("[repro] these stage outputs would be written outside the workspace (an absolute path, a '..' part, "
             "or through a workspace link into the repository): " + ", ".join(bad) + ". Keep stage outputs under "
             "data/ or results/ as relative paths (params such as data.root included), or add their top-level "
             "folder to 'own' in scripts/repro.sh.")
EOF
if [ -n "$retrain" ]; then lanes; fi
dvc repro "$@"
echo "[repro] results of profile $profile are in $ws/results (to try other values, edit $ws/params.yaml and run" \
     "this again: \`dvc exp\` needs git, so it runs at the repository root only)"
