"""Run one pipeline stage's command and record its wall time and peak memory as a small JSON file.

``python -m smoothgeo.pipeline.timed results/timings/<stage>.json -- <command ...>`` runs the command (no shell), waits,
and writes ``{"stage", "wall_seconds", "peak_rss_mib", "returncode"}`` atomically. Every stage in ``dvc.yaml``
is wrapped this way, so the budget of a run is data (``results/timings/``) and the README's stage-timing table
is generated from it (:func:`timing_table`). Peak memory is the largest resident set size of the command and
its children (``RUSAGE_CHILDREN``; Linux reports KiB). The command's exit status is passed on; on failure no
timing file is written, so a failed stage never leaves a record that looks like a finished one.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from smoothgeo.store.atomic import atomic_write_json

__all__ = ["run", "timing_table", "main"]


def run(out: str | Path, command: list[str], *, stage: str | None = None) -> int:
    """Run ``command``; on success write its timing JSON to ``out``; return the exit status."""
    if not command:
        raise ValueError("no command given: use `python -m smoothgeo.pipeline.timed OUT.json -- CMD [ARGS...]`")
    start = time.perf_counter()
    code = subprocess.call(command)
    wall = time.perf_counter() - start
    if code == 0:
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        atomic_write_json(Path(out), {"stage": stage or Path(out).stem, "wall_seconds": round(wall, 1),
                                      "peak_rss_mib": round(peak_kib / 1024, 1), "returncode": code})
    return code


def timing_table(folder: str | Path) -> pd.DataFrame:
    """One row per timing JSON in ``folder`` (sorted by stage name), plus a total row."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]
    frame = pd.DataFrame(rows, columns=["stage", "wall_seconds", "peak_rss_mib"])
    if frame.empty:
        return frame
    total = {"stage": "total", "wall_seconds": frame.wall_seconds.sum(), "peak_rss_mib": frame.peak_rss_mib.max()}
    frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    return frame.assign(wall_minutes=(frame.wall_seconds / 60).round(1))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m smoothgeo.pipeline.timed OUT.json -- CMD [ARGS...]", file=sys.stderr)
        return 2
    out, command = argv[0], argv[2:]
    return run(out, command, stage=Path(out).stem)


if __name__ == "__main__":
    sys.exit(main())
