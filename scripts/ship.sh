#!/usr/bin/env bash
# Ship the default run's cached outputs with the repository: after a default run (`bash scripts/repro.sh` or
# `bash scripts/repro.sh --retrain`) has finished in this checkout,
#
#   bash scripts/ship.sh           push every DVC-cached output that dvc.lock names (checkpoints, attack records;
#                                  not data/raw, which dvc.yaml marks push: false) into store/, the DVC remote
#                                  'shipped' kept inside the repository (.dvc/config: url ../store), drop the
#                                  store's objects that dvc.lock no longer names, check the size limit, and stage
#                                  store/, dvc.lock and .dvc/config for the commit of the run
#   bash scripts/ship.sh --check   change nothing; list the cached outputs of dvc.lock that store/ lacks (exit 1
#                                  if any): what tests/test_store.py checks
#
# Before pushing, dvc.lock loses the entries of stages dvc.yaml no longer defines (a renamed or removed stage:
# DVC keeps them otherwise), so the store holds exactly what the committed lock names.
# The store is plain files in DVC 3's layout (store/files/md5/<2 hex>/<30 hex>, directories as <md5>.dir
# listings), committed to git; a fresh clone's `bash scripts/repro.sh` pulls them offline. It must stay under
# $SMOOTHGEO_STORE_LIMIT_MIB (default 64) MiB: above that, ship.sh stops and names the largest outputs; move the
# cache to a shared remote then (README, "Shared remote").
# SMOOTHGEO_REMOTE=NAME (or another default remote in .dvc/config) pushes to that remote instead (a shared one:
# README, "Shared remote"), and stops
# there: the store checks below are for store/ only. SMOOTHGEO_NO_SETUP=1 skips scripts/env.sh, as in repro.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${SMOOTHGEO_NO_SETUP:-}" ]; then
  cd "$ROOT"
else
  source "$ROOT/scripts/env.sh"
fi
check_only=""
case "${1:-}" in
  "") ;;
  --check) check_only=1 ;;
  *) echo "usage: bash scripts/ship.sh [--check]" >&2; exit 2 ;;
esac
limit_mib=${SMOOTHGEO_STORE_LIMIT_MIB:-64}
remote=${SMOOTHGEO_REMOTE:-$(dvc config core.remote 2>/dev/null || true)}
remote=${remote:-shipped}
if [ "$remote" != shipped ]; then
  [ -n "$check_only" ] && { echo "[ship] --check is for store/ (the remote 'shipped') only" >&2; exit 2; }
  echo "[ship] dvc push -r $remote"
  dvc push -r "$remote"
  exit 0
fi

if ! dvc remote list 2>/dev/null | grep -q '^shipped[[:space:]]'; then
  echo "[ship] .dvc/config has no DVC remote 'shipped' (add it with: dvc remote add -d shipped store)" >&2
  exit 2
fi

# the store's objects the lock needs: every cached, pushable output of dvc.lock, and every file of a cached
# directory (its .dir listing, from the local cache or the store); prints "md5<TAB>output" lines
needed() {
  python - "$1" <<'EOF'
import json
import sys
from pathlib import Path

from dvc.repo import Repo

store = Path("store/files/md5")
mode = sys.argv[1]


def obj(md5: str) -> str:
    return f"{md5[:2]}/{md5[2:]}"


with Repo(".") as repo:
    cache = Path(repo.cache.local.path)
    for stage in repo.index.stages:
        for out in stage.outs:
            if not out.use_cache or not out.can_push or out.hash_info is None or not out.hash_info.value:
                continue
            md5 = out.hash_info.value
            print(f"{md5}\t{out.def_path}")
            if md5.endswith(".dir"):
                listing = next((p / obj(md5) for p in (store, cache / "files" / "md5") if (p / obj(md5)).is_file()),
                               None)
                if listing is None:
                    print(f"{md5}\t{out.def_path} (listing not found locally)")
                    continue
                for entry in json.loads(listing.read_text()):
                    print(f"{entry['md5']}\t{out.def_path}/{entry['relpath']}")
EOF
}

if [ -n "$check_only" ]; then
  missing=0
  while IFS=$'\t' read -r md5 what; do
    if [ ! -f "store/files/md5/${md5:0:2}/${md5:2}" ]; then echo "[ship] not in store/: $what ($md5)"; missing=$((missing + 1)); fi
  done < <(needed check)
  if [ "$missing" -gt 0 ]; then
    echo "[ship] $missing object(s) missing: run \`bash scripts/ship.sh\` after the default run" >&2
    exit 1
  fi
  echo "[ship] store/ holds every cached output dvc.lock names"
  exit 0
fi

# 1. dvc.lock names only stages dvc.yaml defines (DVC's own YAML writer, so the rest of the file is unchanged)
python - <<'EOF'
from dvc.repo import Repo
from dvc.utils.serialize import dump_yaml, load_yaml

with Repo(".") as repo:
    names = {stage.addressing for stage in repo.index.stages}
lock = load_yaml("dvc.lock")
stale = sorted(set(lock.get("stages", {})) - names)
if stale:
    for name in stale:
        del lock["stages"][name]
    dump_yaml("dvc.lock", lock)
    print(f"[ship] dvc.lock: dropped {len(stale)} entr{'y' if len(stale) == 1 else 'ies'} of stages dvc.yaml no "
          f"longer defines: {', '.join(stale)}")
EOF

# 2. every cached output must be in this checkout's cache and unchanged: ship what the lock says, nothing else
status=$(dvc status --json 2>/dev/null || true)
if [ -n "$status" ] && [ "$status" != "{}" ]; then
  echo "[ship] dvc status is not clean, so dvc.lock does not describe this checkout; finish the run first" \
       "(bash scripts/repro.sh), then ship:" >&2
  dvc status >&2 || true
  exit 1
fi

# 3. push, then drop the objects the lock no longer names (an older run's)
echo "[ship] dvc push -r shipped"
dvc push -r shipped
keep=$(mktemp)
trap 'rm -f "$keep"' EXIT
needed ship | cut -f1 | sort -u > "$keep"
dropped=0
if [ -d store/files/md5 ]; then
  while IFS= read -r -d '' f; do
    rel=${f#store/files/md5/}
    md5=${rel%%/*}${rel#*/}
    if ! grep -qxF "$md5" "$keep"; then rm -f "$f"; dropped=$((dropped + 1)); fi
  done < <(find store/files/md5 -type f -print0)
  find store/files/md5 -mindepth 1 -type d -empty -delete
fi
[ "$dropped" -gt 0 ] && echo "[ship] dropped $dropped object(s) of earlier runs from store/"
SMOOTHGEO_NO_SETUP=1 bash "$ROOT/scripts/ship.sh" --check

# 4. the size limit
bytes=$(du -sb store | cut -f1)
mib=$(python -c "print(f'{$bytes / 2**20:.1f}')")
objects=$(find store/files -type f | wc -l)
if python -c "import sys; sys.exit(0 if $bytes <= $limit_mib * 2**20 else 1)"; then
  echo "[ship] store/: $objects objects, $mib MiB (limit $limit_mib MiB)"
else
  echo "[ship] store/ is $mib MiB, over the $limit_mib MiB limit. Largest cached outputs:" >&2
  find store/files -type f -printf '%s\t%p\n' | sort -rn | head -n 5 >&2
  echo "[ship] make the records smaller (attacks.keep_images) or move the cache to a shared remote (README," \
       "\"Shared remote\")" >&2
  exit 1
fi

git add store .dvc/config dvc.lock
echo "[ship] staged store/, dvc.lock and .dvc/config; commit them with the run's results, e.g."
echo "       git add results README.md && git commit -m 'Default run, shipped in store/'"
