"""Nothing stale is committed (issue 20, finding 12): every entry of dvc.lock is a stage of dvc.yaml (foreach
stages expanded by DVC itself, against params.yaml), and every committed file under results/ is the output of
some stage (a file under an output folder counts; empty ``.gitkeep`` placeholders that keep a folder in a fresh
clone are the one exception). A stage removed from dvc.yaml, or a model dropped from params.yaml, must take its
lock entry and its old records with it: the notebook stages read results/training as a whole folder."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages() -> dict[str, list[str]]:
    """``{stage name: [output paths]}`` of dvc.yaml as DVC expands it (``train_scratch@natural-s0`` ...)."""
    pytest.importorskip("dvc")
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {s.addressing: [str(o.def_path) for o in s.outs] for s in repo.index.stages}


def test_every_dvc_lock_entry_is_a_stage_of_dvc_yaml(stages):
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text()) or {}
    stale = sorted(set(lock.get("stages", {})) - set(stages))
    assert not stale, (f"dvc.lock has entries of stages that dvc.yaml (with params.yaml) no longer defines: "
                       f"{stale}; remove them from dvc.lock (and their old outputs)")


def _committed(folder: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", folder], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.split("\0") if p]


def _is_output(path: str, outputs: list[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)


def test_every_committed_result_is_some_stage_output(stages):
    files = _committed("results")
    if not files:
        pytest.skip("not a git checkout with committed results")
    outputs = [out for outs in stages.values() for out in outs]
    orphans = [f for f in files if not _is_output(f, outputs)
               and not (Path(f).name == ".gitkeep" and (ROOT / f).stat().st_size == 0)]
    assert not orphans, (f"{len(orphans)} committed files under results/ are no stage's output (left by stages "
                         f"or models that no longer exist): {orphans[:20]}; `git rm` them")


def test_the_check_finds_an_orphan_and_a_stale_entry():
    """The two rules on made-up data: an output folder covers its files, a stale name is found."""
    outputs = ["results/notebooks/geometry.ipynb", "results/claims", "results/training/natural-s0.json"]
    assert _is_output("results/claims/central.csv", outputs)
    assert _is_output("results/training/natural-s0.json", outputs)
    assert not _is_output("results/training/natural.json", outputs)
    assert not _is_output("results/claims.csv", ["results/claims"])
