"""One call that gives a notebook everything a run produced: :func:`load_run`.

Every notebook opens the same way (repository root, random generator, model registry with clean accuracy,
attack and measure tables, the claims table, the tables the claims rest on, output folder). :func:`load_run`
does it once::

    from smoothgeo import load_run
    run = load_run("transfer", seed=seed, models=models, attacks=attacks, comparisons=comparisons)
    run.claims_of("RQ3")              # rows of results/claims.csv (+ the replication rows)
    run.support("transfer")           # results/claims/transfer.csv, written by the claims stage
    run.tables.beyond("SM-topk", "SM-random")   # per-image damage beyond noise (smoothgeo.analysis.frames)
    run.answer(["transfer-ssr", "transfer-madry"])   # the claims in plain words, formatted from the table

Nothing here attacks, trains, measures or re-estimates a claim: it reads the tidy tables under ``results/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from smoothgeo.analysis import claims as _claims
from smoothgeo.analysis import frames
from smoothgeo.analysis.render import repo_root, results_dir
from smoothgeo.analysis.results import load_attacks, load_explanations, load_measures, model_table

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
    tables: _claims.Tables | None = None

    def claims_of(self, rq: str | None = None, ids=None) -> pd.DataFrame:
        """Claims rows of one research question (``"RQ1"`` ... ``"RQ4"``) and/or with the given ids, in the
        order of ``ids`` when given; every column kept."""
        c = self.claims
        if not len(c):
            return c
        if rq is not None:
            c = c[c.rq == rq]
        if ids is not None:
            ids = list(ids)
            c = c[c.id.isin(ids)].assign(_o=lambda f: f.id.map(ids.index)).sort_values("_o").drop(columns="_o")
        return c

    def support(self, name: str) -> pd.DataFrame:
        """A table the claims stage wrote (``results/claims/<name>.csv``); an empty frame if it wrote none
        (e.g. a profile without the stronger reference attack)."""
        path = self.root / "results" / "claims" / f"{name}.csv"
        if not path.exists():
            return pd.DataFrame()
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:      # a table with no rows and no columns
            return pd.DataFrame()

    def answer(self, ids) -> str:
        """The named claims in plain words (:func:`smoothgeo.analysis.claims.plain_words`), one sentence each,
        formatted from the claims table; a claim without a row says why (``not_estimable``)."""
        rows = self.claims_of(ids=ids)
        have = set(rows.id) if len(rows) else set()
        out = [_claims.plain_words(r) for _, r in rows.iterrows()]
        gaps = self.support("not_estimable")
        for i in ids:
            if i not in have:
                why = gaps[gaps.id == i].reason.tolist() if len(gaps) else []
                out.append(f"Claim {i} has no estimate in this run" + (f" ({why[0]})." if why else "."))
        return " ".join(out)


def load_run(name: str, *, seed: int = 0, models: dict, attacks: dict | None = None,
             comparisons: dict | None = None, root: str | Path | None = None) -> Run:
    """Read the run under ``root/results`` for the notebook ``name``.

    Args:
        name: the notebook's name; its tables and figures go to ``results/<name>/`` (``run.out``).
        seed: params.yaml's ``seed``; ``run.rng`` is ``numpy.random.default_rng(seed)``.
        models: params.yaml's ``models`` section (evaluated model -> checkpoint).
        attacks: params.yaml's ``attacks`` section (at least ``defaults``); with ``comparisons`` it gives
            ``run.tables``, the claims' view of the run (groups, settings, damage beyond noise).
        comparisons: params.yaml's ``comparisons`` section.
        root: the repository (or profile workspace) root; default: found from the working directory.
    Returns:
        :class:`Run` with the model registry (clean accuracy attached), the attack and measure tables of those
        models, and the claims table with the replication rows (empty when the claims stage has not run).
    """
    root = Path(root) if root is not None else repo_root()
    results = root / "results"
    measures = load_measures(results)
    table = frames.with_accuracy(model_table({"models": models}, results), measures)
    attack_rows = load_attacks(results, table.model)
    parts = [pd.read_csv(p) for p in (results / "claims.csv", results / "claims" / "replication.csv",
                                           results / "claims" / "beyond.csv") if p.exists()]
    claims = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else pd.DataFrame(columns=_claims.COLUMNS)
    tables = None
    if attacks is not None and comparisons is not None:
        defaults = attacks["defaults"]
        eps = float(defaults["epsilons"][0] if "epsilons" in defaults else defaults["epsilon"])
        tables = _claims.Tables(params={"models": models, "attacks": attacks, "comparisons": comparisons},
                                models=table, attacks=attack_rows, measures=measures, eps=eps,
                                explanations=load_explanations(results, table.model))
    return Run(name=name, root=root, out=results_dir(name, root), rng=np.random.default_rng(seed), models=table,
               attacks=attack_rows, measures=measures, claims=claims, tables=tables)
