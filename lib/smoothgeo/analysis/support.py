"""The tables the claims rest on and the run's headline metrics (read by the claims stage and the notebooks).

* :func:`load_tables`: a run's :class:`~smoothgeo.analysis.claims.Tables` (models, attacks, measures).
* :func:`support_tables`: per-model summary, robustness against eps, the attack's strength against the stronger
  reference, transfer beyond noise, the minimum detectable effect of every seed-level claim.
* :func:`learning_curves`: every training record's validation curve and plateau.
* :func:`headline_metrics`: a handful of figures per central group for ``dvc metrics show``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from smoothgeo.analysis import claims, frames
from smoothgeo.analysis.results import load_attacks, load_explanations, load_measures, model_table
from smoothgeo.analysis.seed_level import claim_seed, t_interval

__all__ = ["load_tables", "support_tables", "learning_curves", "headline_metrics"]


def load_tables(params: dict, results: Path) -> claims.Tables:
    models = model_table(params, results)
    measures = load_measures(results, models.model)
    models = frames.with_accuracy(models, measures)
    attacks = load_attacks(results, models.model)
    defaults = params["attacks"]["defaults"]
    eps = float(defaults["epsilons"][0] if "epsilons" in defaults else defaults["epsilon"])
    return claims.Tables(params=params, models=models, attacks=attacks, measures=measures, eps=eps,
                         explanations=load_explanations(results, models.model))


def learning_curves(params: dict, results: Path) -> pd.DataFrame:
    from smoothgeo.store.atomic import read_json

    rows = []
    for name in sorted(set((params.get("models") or {}).values())):
        path = results / "training" / f"{name}.json"
        if not path.exists():
            continue
        rec = read_json(path)
        for step, acc in rec.get("val_curve") or []:
            rows.append({"model": name, "recipe": rec.get("recipe"), "seed": rec.get("seed"), "batch": step,
                         "val_accuracy": acc, "plateau_gain": rec.get("plateau_gain"),
                         "test_accuracy": rec.get("test_accuracy")})
    return pd.DataFrame(rows, columns=["model", "recipe", "seed", "batch", "val_accuracy", "plateau_gain",
                                       "test_accuracy"])


def _eps_curve(t: claims.Tables) -> pd.DataFrame:
    """Per central group and eps: mean raw top-k and damage beyond noise, seed-level t intervals."""
    rows = []
    for eps, attack, floor in [(0.05, "SM-topk-small", "SM-random-small"), (t.eps, "SM-topk", "SM-random"),
                               (0.2, "SM-topk-large", "SM-random-large")]:
        try:
            b = t.beyond(attack, floor, eps=eps)
        except (claims.NotEstimable, ValueError):
            continue
        for role in ("natural", "ssr", "madry"):
            try:
                g = b[b.model.isin(t.group(role))]
            except claims.NotEstimable:
                continue
            per_seed = g.groupby("seed")[["topk", "topk_beyond"]].mean()
            for col in ("topk", "topk_beyond"):
                mean, lo, hi, _ = t_interval(per_seed[col].to_numpy(float))
                rows.append({"group": role, "epsilon": eps, "metric": col, "mean": mean, "ci_low": lo,
                             "ci_high": hi, "n_seeds": len(per_seed)})
    return pd.DataFrame(rows)


def _power(t: claims.Tables, table: pd.DataFrame) -> pd.DataFrame:
    """Minimum detectable effect of each seed-level row at power 0.8 and the worst Holm threshold, from this
    run's seed-level standard deviation (docs/protocol.md)."""
    from scipy import stats as st

    main = table[table.family == "main"]
    alpha = 0.05 / max(1, len(main))
    rows = []
    for r in main.itertuples():
        if "seed-level" not in r.method or r.n_seeds < 2:
            continue
        df = r.n_seeds - 1
        se = (r.ci_high - r.ci_low) / (2 * st.t.ppf(0.975, df))
        mde = (st.t.ppf(1 - alpha / 2, df) + st.t.ppf(0.8, df)) * se
        rows.append({"id": r.id, "metric": r.metric, "n_seeds": r.n_seeds, "seed_se": se, "mde": mde,
                     "effect": r.effect})
    return pd.DataFrame(rows)


def support_tables(t: claims.Tables, table: pd.DataFrame, *, seed: int) -> dict[str, pd.DataFrame]:
    """The tables the claims rest on, which the notebooks show (results/claims/<name>.csv)."""
    out = {"model_summary": t.summary(), "eps_curve": _eps_curve(t), "power": _power(t, table),
           "explanations": frames.explanation_summary(t.explanations)}
    try:
        out["strength_check"] = frames.strength_check(
            t.attacks, ensemble=t.setting("SM-topk"), reference=t.setting("SM-topk-strong"),
            rng=np.random.default_rng(claim_seed(seed, "strength-check")))
    except claims.NotEstimable:
        pass
    try:
        sets = {m: t.setting(f"{m}-topk-b10") for m in ("SM", "IG", "SG", "UG")}
        out["transfer"] = frames.transfer_table(t.attacks, attack_settings=sets,
                                                random_setting=t.setting("SM-random-b10"))
    except claims.NotEstimable:
        pass
    return out


def headline_metrics(table: pd.DataFrame, t: claims.Tables) -> dict:
    """A handful of headline figures per central group, for ``dvc metrics show`` (details stay in results/)."""
    s = t.summary()
    out = {}
    for role in ("natural", "ssr", "madry"):
        try:
            g = s[s.model.isin(t.group(role))]
        except claims.NotEstimable:
            continue
        out[role] = {"test_accuracy": g.test_accuracy.mean(), "topk_under_attack": g.topk.mean(),
                     "topk_beyond_noise": g.topk_beyond.mean(), "damage_ratio": g.damage_ratio.mean()}
    out["verdicts"] = table[table.family == "main"].verdict.value_counts().to_dict()
    return out
