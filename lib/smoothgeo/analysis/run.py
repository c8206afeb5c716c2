"""One call that gives a notebook everything a run produced: :func:`load_run`.

Every notebook used to open with the same set-up (repository root, random generator, model registry with clean
accuracy, attack and measure tables, claims, output folder). :func:`load_run` does it once::

    from smoothgeo import load_run
    run = load_run("transfer", seed=seed, models=models)
    run.attacks, run.models, run.measures, run.claims, run.out, run.rng

Nothing here attacks, trains or measures: it reads the tidy tables under ``results/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from smoothgeo.analysis import frames
from smoothgeo.analysis.render import repo_root, results_dir
from smoothgeo.analysis.results import load_attacks, load_measures, model_table

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    """The tables of one pipeline run, as read by :func:`load_run`."""

    name: str
    root: Path
    out: Path
    rng: np.random.Generator
    models: pd.DataFrame
    attacks: pd.DataFrame
    measures: pd.DataFrame
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)

    def claims_of(self, rq: str) -> pd.DataFrame:
        """The claims rows of one research question (``"RQ1"`` ... ``"RQ4"``), every column kept."""
        return self.claims[self.claims.rq == rq] if len(self.claims) else self.claims


def load_run(name: str, *, seed: int = 0, models: dict, root: str | Path | None = None) -> Run:
    """Read the run under ``root/results`` for the notebook ``name``.

    Args:
        name: the notebook's name; its tables and figures go to ``results/<name>/`` (``run.out``).
        seed: params.yaml's ``seed``; ``run.rng`` is ``numpy.random.default_rng(seed)``.
        models: params.yaml's ``models`` section (evaluated model -> checkpoint).
        root: the repository (or profile workspace) root; default: found from the working directory.
    Returns:
        :class:`Run` with the model registry (clean accuracy attached), the attack and measure tables of those
        models, and the claims table (empty when the claims stage has not run).
    """
    root = Path(root) if root is not None else repo_root()
    results = root / "results"
    measures = load_measures(results)
    table = frames.with_accuracy(model_table({"models": models}, results), measures)
    attacks = load_attacks(results, table.model)
    claims_path = results / "claims.csv"
    claims = pd.read_csv(claims_path) if claims_path.exists() else pd.DataFrame()
    return Run(name=name, root=root, out=results_dir(name, root), rng=np.random.default_rng(seed), models=table,
               attacks=attacks, measures=measures, claims=claims)
