"""Cost of every attack setting per image-iteration, from the attack stage's own per-setting timings.

The attack stage writes ``data/cache/timings/attack-<model>.json`` (``setting_seconds``: wall seconds of each
setting it computed, resumed ones excluded). This script divides each by the setting's work, images x iterations,
where iterations = steps x restarts x surrogates (the random floor: its draws), and prints one row per setting:
models timed, median and range of milliseconds per image-iteration, and the setting's total seconds over all
models. It reads a finished run; it attacks nothing.

    python benchmarks/attack_cost.py                       # the default run in this checkout
    python benchmarks/attack_cost.py --root runs/smoke     # a profile workspace
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from smoothgeo.pipeline.attack_config import resolve_settings
from smoothgeo.store.atomic import load_params


def _iterations(setting: dict) -> int:
    steps = int(setting.get("steps") or 0)
    restarts = int(setting.get("restarts") or 1)
    surrogates = setting.get("surrogates") or [None]
    if setting["kind"] == "random":
        return max(1, steps) * restarts
    return max(1, steps) * restarts * len(surrogates)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="the run's root (repository or profile workspace)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    params = load_params(root / "params.yaml")
    folder = root / "data" / "cache" / "timings"
    if not folder.is_dir():
        raise SystemExit(f"no {folder}: run the attack stage first (`bash scripts/repro.sh --retrain`)")
    per_setting: dict[str, list[float]] = {}
    totals: dict[str, float] = {}
    for path in sorted(folder.glob("attack-*.json")):
        rec = json.loads(path.read_text())
        model = rec["model"]
        settings = {s["id"]: s for s in resolve_settings(params, model, smooth="+softplus" in model)}
        for sid, seconds in (rec.get("setting_seconds") or {}).items():
            s = settings.get(sid)
            if s is None:
                continue
            images = int(s.get("n_images") or rec.get("images") or params["attacks"]["n_images"])
            work = images * _iterations(s)
            per_setting.setdefault(sid, []).append(1e3 * float(seconds) / work)
            totals[sid] = totals.get(sid, 0.0) + float(seconds)
    print(f"{'setting':28} {'models':>6} {'ms/img-iter':>11} {'range':>15} {'total s':>8}")
    for sid in sorted(per_setting, key=lambda k: -totals[k]):
        v = per_setting[sid]
        print(f"{sid:28} {len(v):6d} {statistics.median(v):11.3f} {min(v):7.3f}-{max(v):<7.3f} {totals[sid]:8.0f}")
    print(f"{'all settings':28} {'':6} {'':11} {'':15} {sum(totals.values()):8.0f}")


if __name__ == "__main__":
    main()
