#!/usr/bin/env bash
# The proof that the committed default run regenerates from what ships (issue 22): in a fresh clone of this
# repository's HEAD, delete every output of the notebook, claims and report stages, run the README's main command
# (`bash scripts/repro.sh`), and require
#   1. every deleted output back, and every committed file byte-identical to HEAD, timings aside: results/timings/,
#      the "Stage timings" section of results/SUMMARY.md and README.md, and the dvc.lock entries of timing files;
#   2. nothing trained, attacked or measured (no train_scratch/train_finetune/attack/measure stage ran);
#   3. the main command done within --max-seconds (default 600: "under 10 minutes").
# A pipeline that is merely up to date proves nothing, hence the deletions.
#
#   bash scripts/check_shipped.sh [--keep] [--max-seconds N]
#
# The clone reuses this checkout's environment (SMOOTHGEO_VENV, default .venv: its editable install points here,
# so PYTHONPATH puts the clone's own lib/ first) and runs offline: SMOOTHGEO_OFFLINE=1 (no downloads) and a dead
# proxy for anything else. Fashion-MNIST must be on the machine (the Debian package, as scripts/env.sh installs
# it): data/raw is not shipped, the data stage copies it. The clone is in $TMPDIR (removed unless --keep); the
# log of the main command is kept in .dvc/tmp/check_shipped.log of this checkout. Exit 0 only if all checks hold.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
keep="" max_seconds=600
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --max-seconds) max_seconds=$2; shift ;;
    *) echo "usage: bash scripts/check_shipped.sh [--keep] [--max-seconds N]" >&2; exit 2 ;;
  esac
  shift
done
venv=${SMOOTHGEO_VENV:-$ROOT/.venv}
if [ ! -x "$venv/bin/python" ]; then
  echo "[check] no environment at $venv: run \`bash scripts/test.sh\` or \`source scripts/env.sh\` once first" >&2
  exit 2
fi
if [ -n "$(git -C "$ROOT" status --porcelain -- store dvc.lock results)" ]; then
  echo "[check] note: store/, dvc.lock or results/ have uncommitted changes; the clone checks HEAD only"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/smoothgeo-check.XXXXXX")
clone="$work/clone"
if [ -z "$keep" ]; then trap 'rm -rf "$work"' EXIT; fi
mkdir -p "$ROOT/.dvc/tmp"
log="$ROOT/.dvc/tmp/check_shipped.log"

git clone -q "$ROOT" "$clone"
echo "[check] fresh clone of $(git -C "$clone" rev-parse --short HEAD) in $clone"
export SMOOTHGEO_VENV="$venv" PYTHONPATH="$clone/lib${PYTHONPATH:+:$PYTHONPATH}" SMOOTHGEO_OFFLINE=1 \
  DVC_NO_ANALYTICS=1 http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 \
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 no_proxy= NO_PROXY=
export PATH="$venv/bin:$PATH"
cd "$clone"

# the outputs of the notebook, claims and report stages (as DVC expands dvc.yaml), deleted
python - "$work/deleted.txt" <<'EOF'
import shutil
import sys
from pathlib import Path

from dvc.repo import Repo

with Repo(".") as repo:
    stages = [s for s in repo.index.stages
              if s.addressing.split("@")[0] in {"notebook", "qualitative", "toy_2d", "claims", "report"}]
    paths = sorted({str(out.def_path) for s in stages for out in s.outs})
for path in paths:
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
Path(sys.argv[1]).write_text("\n".join(paths) + "\n")
print(f"[check] deleted {len(paths)} outputs of {len(stages)} stages ({', '.join(s.addressing for s in stages)})")
EOF

echo "[check] running the main command: bash scripts/repro.sh (log: $log)"
start=$(date +%s)
status=0
bash scripts/repro.sh >"$log" 2>&1 || status=$?
seconds=$(( $(date +%s) - start ))
echo "[check] main command: exit $status after $((seconds / 60)) min $((seconds % 60)) s"
if [ "$status" != 0 ]; then tail -n 30 "$log" >&2; exit 1; fi

python - "$work/deleted.txt" "$log" "$seconds" "$max_seconds" <<'EOF'
import re
import subprocess
import sys
from pathlib import Path

import yaml

deleted = [p for p in Path(sys.argv[1]).read_text().split("\n") if p]
log = Path(sys.argv[2]).read_text()
seconds, max_seconds = int(sys.argv[3]), int(sys.argv[4])
problems = []


def head(path: str) -> bytes | None:
    out = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True)
    return out.stdout if out.returncode == 0 else None


def without_timings(text: str) -> str:
    # the "### Stage timings" section, up to the next heading or marker
    return re.sub(r"^### Stage timings.*?(?=^#|^<!--|\Z)", "", text, flags=re.MULTILINE | re.DOTALL)


def lock_without_timings(data: bytes) -> dict:
    lock = yaml.safe_load(data) or {}
    for entry in lock.get("stages", {}).values():
        # results/SUMMARY.md holds the stage timings: its hash changes with them (the file itself is compared
        # below with its timings section removed)
        entry["outs"] = [o for o in entry.get("outs", []) if not o["path"].startswith("results/timings/")
                         and o["path"] != "results/SUMMARY.md"]
        entry["deps"] = [d for d in entry.get("deps", []) if not d["path"].startswith("results/timings")]
    return lock


for path in deleted:
    if not Path(path).exists():
        problems.append(f"not regenerated: {path}")

changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
for line in changed:
    path = line[3:]
    if path.startswith("results/timings/"):
        continue
    committed = head(path)
    if committed is None:
        problems.append(f"new file, not in the commit: {path}")
    elif not Path(path).exists():
        problems.append(f"deleted: {path}")
    elif path in ("results/SUMMARY.md", "README.md"):
        if without_timings(Path(path).read_text()) != without_timings(committed.decode()):
            problems.append(f"differs beyond its timings section: {path}")
    elif path == "dvc.lock":
        if lock_without_timings(Path(path).read_bytes()) != lock_without_timings(committed):
            problems.append("dvc.lock differs beyond the hashes of timing files")
    else:
        problems.append(f"differs from the commit: {path}")

ran = re.findall(r"^Running stage '([^']+)'", log, flags=re.MULTILINE)
expensive = [s for s in ran if s.split("@")[0] in {"train_scratch", "train_finetune", "attack", "measure"}]
if expensive:
    problems.append(f"trained, attacked or measured: {', '.join(expensive)}")
print(f"[check] stages run: {', '.join(ran) or 'none'}")
if seconds > max_seconds:
    problems.append(f"the main command took {seconds} s, over {max_seconds} s")
if problems:
    print("[check] FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"[check] OK: {len(deleted)} deleted outputs regenerated byte for byte (timings aside), nothing trained, "
      f"{seconds} s")
EOF
