"""Run independent DVC stages of one kind in parallel lanes, then record them with ``dvc commit``.

``dvc repro`` runs one stage at a time. On a small CPU two single-thread processes do more work than one
two-thread process (the small networks here barely use a second thread; see ``benchmarks/``), so
``scripts/repro.sh`` runs the expensive stage groups through this module first::

    python -m smoothgeo.pipeline.lanes --jobs 2 train_scratch train_finetune attack measure

For each group in order it asks DVC which of the group's stages are not up to date (``dvc status``), runs each
one's own ``cmd`` (exactly what ``dvc repro`` would run) in ``--jobs`` lanes, and after the group has finished
records every stage that succeeded with ``dvc commit`` (one DVC process at a time: DVC serialises its own
commands). A group waits for the one before it, so dependencies between groups (train -> attack -> measure) hold;
stages inside a group must not depend on each other (true of the foreach groups above, where each stage reads
only checkpoints of the earlier groups: ``train_finetune`` reads ``train_scratch`` checkpoints).

The results are the bytes ``dvc repro`` would give, because each stage pins its torch threads (params
``threads``). A failed stage stops the run after its group, with its log (``.dvc/tmp/lanes/<stage>.log``); what
succeeded is committed first, so a rerun resumes. Afterwards ``dvc repro`` runs what is left (notebooks, claims).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["stale_stages", "run_group", "main"]


def _dvc(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], check=True, text=True, capture_output=capture)


def _commands() -> dict[str, str]:
    """Stage name -> its shell command, as DVC resolves them (foreach expanded)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return {stage.addressing: stage.cmd for stage in repo.index.stages if getattr(stage, "cmd", None)}


def stale_stages(group: str, commands: dict[str, str]) -> list[str]:
    """The stages of ``group`` (``group`` itself or ``group@key``) that ``dvc status`` reports as changed."""
    names = [n for n in commands if n == group or n.startswith(f"{group}@")]
    if not names:
        return []
    out = _dvc("status", "--json", *names).stdout.strip()
    changed = json.loads(out or "{}")
    return [n for n in names if n in changed]


def _run_one(name: str, cmd: str, logs: Path) -> tuple[str, int, float]:
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(logs / f"{name.replace('@', '_')}.log", "w") as log:
        code = subprocess.call(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT)
    return name, code, time.perf_counter() - start


def run_group(group: str, commands: dict[str, str], *, jobs: int, logs: Path) -> list[str]:
    """Run the stale stages of ``group`` in ``jobs`` lanes, commit the ones that succeeded; return the failed."""
    todo = stale_stages(group, commands)
    if not todo:
        print(f"[lanes] {group}: up to date", flush=True)
        return []
    print(f"[lanes] {group}: {len(todo)} stage(s) in {jobs} lane(s)", flush=True)
    done, failed = [], []
    env_note = os.environ.get("OMP_NUM_THREADS")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for name, code, secs in pool.map(lambda n: _run_one(n, commands[n], logs), todo):
            status = "ok" if code == 0 else f"FAILED (exit {code}, log {logs / name.replace('@', '_')}.log)"
            print(f"[lanes] {name}: {status} in {secs:.0f} s", flush=True)
            (done if code == 0 else failed).append(name)
    if done:
        _dvc("commit", "--force", "--quiet", *done, capture=False)
    if env_note is not None:
        print(f"[lanes] note: OMP_NUM_THREADS={env_note} was set", flush=True)
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smoothgeo.pipeline.lanes", description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", help="stage groups in order, e.g. train_scratch attack measure")
    parser.add_argument("--jobs", type=int, default=2, help="parallel lanes (default 2)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    logs = Path(".dvc/tmp/lanes")
    for group in args.groups:
        commands = _commands()
        failed = run_group(group, commands, jobs=args.jobs, logs=logs)
        if failed:
            print(f"[lanes] stopping: {len(failed)} stage(s) of {group} failed: {', '.join(failed)}", file=sys.stderr)
            for name in failed:
                tail = (logs / f"{name.replace('@', '_')}.log").read_text().splitlines()[-15:]
                print(f"--- {name} ---\n" + "\n".join(tail), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
