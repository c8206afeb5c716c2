"""The analyses behind the notebooks and the claims table, as functions of the pipeline's tidy tables.

Nothing here attacks, trains or measures: the inputs are :func:`smoothgeo.analysis.results.model_table`,
:func:`~smoothgeo.analysis.results.load_attacks` and :func:`~smoothgeo.analysis.results.load_measures`; the statistics are those
of :mod:`smoothgeo.analysis.stats` (hierarchical bootstrap over training seeds and the shared evaluation images, paired
differences on images both models classify correctly). Every function takes the numpy ``Generator`` it draws
from, seeded from params.yaml by the caller.

Orientation: every robustness value is reported so that *higher = more robust*. Top-k intersection, Kendall's
tau and Spearman's rho are used as they are; for mass-centre dislocation (pixels), cosine distance and the
targeted attack's distance to its target the analysis uses the sign that makes "more robust" positive
(:data:`HIGHER_IS_ROBUST`, :func:`robust_value`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from smoothgeo.analysis import stats

__all__ = ["HIGHER_IS_ROBUST", "robust_value", "attach_models", "own_rows", "model_robustness",
           "group_members", "paired_effects", "frontier_points", "frontier_comparisons", "diagnostics",
           "transfer_matrix", "transfer_effects", "epsilon_curve", "model_geometry", "with_accuracy"]

# metric -> True if a larger value means the map moved less (more robust attribution)
HIGHER_IS_ROBUST = {"topk": True, "kendall": True, "spearman": True, "mass_center": False, "cosine": False,
                    "target_distance": True, "target_remaining": True}
# the targeted attack *wants* a small distance to its target: a larger distance = the attack failed = robust


def robust_value(frame: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` oriented so that higher = more robust (see :data:`HIGHER_IS_ROBUST`)."""
    if metric not in HIGHER_IS_ROBUST:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(HIGHER_IS_ROBUST)}")
    values = frame[metric].astype(float)
    return values if HIGHER_IS_ROBUST[metric] else -values


def attach_models(frame: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """Add family, strength, seed, test accuracy and cost of each row's model (from the model table)."""
    cols = ["model", "family", "strength", "seed", "test_accuracy", "cost_vs_natural"]
    return frame.drop(columns=[c for c in cols[1:] if c in frame.columns]).merge(models[cols], on="model",
                                                                                  how="left")


def own_rows(attacks: pd.DataFrame, setting: str, *, evaluated_method: str | None = None) -> pd.DataFrame:
    """The rows of one attack setting evaluated on the attacked method itself (or on ``evaluated_method``)."""
    rows = attacks[attacks.setting == setting]
    if rows.empty:
        known = sorted(attacks.setting.unique())
        raise KeyError(f"no attack rows for setting {setting!r}; settings in the tables: {known}")
    ev = rows.attacked_method if evaluated_method is None else evaluated_method
    return rows[rows.evaluated_method == ev]


def model_robustness(attacks: pd.DataFrame, models: pd.DataFrame, *, setting: str, metric: str = "topk",
                     rng: np.random.Generator, n_boot: int = 1000) -> pd.DataFrame:
    """Per model: the mean of ``metric`` (as measured, not re-oriented) over its attacked images, 95% CI."""
    rows = []
    own = own_rows(attacks, setting)
    for name, g in own.groupby("model", sort=False):
        g = g[g.attacked.astype(bool)]
        r = stats.hierarchical_bootstrap(g, metric, rng=rng, n_boot=n_boot)
        rows.append({"model": name, "setting": setting, "metric": metric, "mean": r.estimate,
                     "ci_low": r.ci_low, "ci_high": r.ci_high, "n_images": r.n_images})
    return attach_models(pd.DataFrame(rows), models)


def group_members(models: pd.DataFrame, names) -> pd.DataFrame:
    """The model-table rows of ``names`` (a list of model names), in that order; clear error if one is missing."""
    names = list(names)
    missing = sorted(set(names) - set(models.model))
    if missing:
        raise KeyError(f"models {missing} are not in the model table; add them to params.yaml `models`")
    return models.set_index("model").loc[names].reset_index()


def _group_rows(own: pd.DataFrame, models: pd.DataFrame, names) -> pd.DataFrame:
    """Rows of a group of models, with the seed column = the model's training seed."""
    members = group_members(models, names)
    rows = own[own.model.isin(members.model)]
    return rows.drop(columns=[c for c in ("seed",) if c in rows.columns]).merge(members[["model", "seed"]],
                                                                                 on="model")


def paired_effects(attacks: pd.DataFrame, models: pd.DataFrame, groups: dict[str, list[str]], *,
                   baseline: str, settings: dict[str, list[str]], rng: np.random.Generator,
                   n_boot: int = 2000) -> pd.DataFrame:
    """Paired robustness gain of each group over ``groups[baseline]``, per setting and metric.

    Seeds are paired by index (the models named ``*_s0`` share an initialisation and batch order), images by
    index, and only images both models classify correctly count (:func:`smoothgeo.analysis.stats.paired_difference`).
    ``effect`` is oriented so that positive = the group is more robust than the baseline.

    Args:
        groups: group name -> model names (e.g. the ``comparisons.central`` section).
        settings: setting id -> metrics to compare on it.
    """
    out = []
    for setting, metrics in settings.items():
        own = own_rows(attacks, setting)
        base = _group_rows(own, models, groups[baseline])
        for group, names in groups.items():
            if group == baseline:
                continue
            treat = _group_rows(own, models, names)
            for metric in metrics:
                t = treat.assign(_v=robust_value(treat, metric))
                b = base.assign(_v=robust_value(base, metric))
                pairing = "index" if t.seed.nunique() == b.seed.nunique() else "mean"
                r = stats.paired_difference(t, b, "_v", rng=rng, n_boot=n_boot, pairing=pairing)
                out.append({"group": group, "baseline": baseline, "setting": setting, "metric": metric,
                            "effect": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value,
                            "n_images": r.n_images, "n_seeds": r.n_seeds,
                            "baseline_mean": float(b.loc[b.attacked.astype(bool), metric].mean()),
                            "group_mean": float(t.loc[t.attacked.astype(bool), metric].mean())})
    return pd.DataFrame(out)


def frontier_points(attacks: pd.DataFrame, models: pd.DataFrame, *, families, baseline: list[str],
                    setting: str, metric: str = "topk", rng: np.random.Generator, n_boot: int = 1000,
                    n_test: int = 10000) -> pd.DataFrame:
    """One point per (family, strength): clean accuracy, robustness (``metric`` under ``setting``) and cost.

    Every family's curve starts at the natural models trained on the same budget (``baseline``, strength 0)
    and takes *every* strength trained for it (seeds of one strength pooled by the hierarchical bootstrap).
    Accuracy is the full test-set accuracy (``n_test`` images), its interval the spread over seeds (t interval)
    or, for a single seed, the binomial error.
    """
    own = own_rows(attacks, setting)
    rows = []
    base = group_members(models, baseline)
    for family in families:
        members = models[models.family == family]
        if members.empty:
            continue
        pts = [(0.0, base)] + [(s, g) for s, g in members.groupby("strength", sort=True)]
        for strength, group in pts:
            g = _group_rows(own, models, group.model)
            g = g[g.attacked.astype(bool)]
            r = stats.hierarchical_bootstrap(g.assign(_v=g[metric]), "_v", rng=rng, n_boot=n_boot)
            acc = group.test_accuracy.astype(float)
            half = _accuracy_half_width(acc, n_test)
            rows.append({"family": family, "strength": strength, "models": " ".join(group.model),
                         "n_seeds": len(group), "accuracy": acc.mean(), "accuracy_low": acc.mean() - half,
                         "accuracy_high": acc.mean() + half, "robustness": r.estimate,
                         "robustness_low": r.ci_low, "robustness_high": r.ci_high,
                         "cost": group.cost_vs_natural.astype(float).mean(), "n_images": r.n_images})
    return pd.DataFrame(rows)


def _accuracy_half_width(values: pd.Series, n_test: int, level: float = 0.95) -> float:
    """Half width of the accuracy interval: t interval over seeds (two or more), else the binomial error of
    one model's accuracy on ``n_test`` test images."""
    from scipy import stats as st

    v = values.dropna().to_numpy(float)
    if len(v) >= 2:
        return float(st.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    if len(v) == 1:
        return float(st.norm.ppf(0.5 + level / 2) * np.sqrt(v[0] * (1 - v[0]) / n_test))
    return float("nan")


def frontier_comparisons(points: pd.DataFrame, pairs, *, rng: np.random.Generator, n_boot: int = 1000
                         ) -> pd.DataFrame:
    """Each (family a, family b) compared at matched clean accuracy and at matched training cost.

    Uses every point of both curves (:func:`smoothgeo.analysis.stats.frontier_difference`); a comparison whose ranges
    do not overlap is reported with NaN and the reason, never dropped silently.
    """
    rows = []
    for a, b in pairs:
        for matched, fn in (("accuracy", stats.matched_accuracy), ("cost", stats.matched_cost)):
            kw = {} if matched == "accuracy" else {"cost": "cost"}
            try:
                r, _ = fn(points, a, b, rng=rng, n_boot=n_boot, **kw)
                rows.append({"family_a": a, "family_b": b, "matched": matched, "effect": r.estimate,
                             "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value,
                             "n_points": r.n_images, "note": ""})
            except ValueError as exc:
                rows.append({"family_a": a, "family_b": b, "matched": matched, "effect": np.nan,
                             "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_points": 0,
                             "note": str(exc)})
    return pd.DataFrame(rows)


def diagnostics(attacks: pd.DataFrame) -> pd.DataFrame:
    """The attacks' own diagnostics per model and setting (rows of the attacked method, attacked images).

    stall_rate (share of images whose final proposals were all rejected), mean accepted and rejected steps,
    zero-direction steps, and how often each surrogate beta produced the returned (worst) iterate.
    """
    own = attacks[(attacks.evaluated_method == attacks.attacked_method) & attacks.attacked.astype(bool)]
    rows = []
    for (model, setting), g in own.groupby(["model", "setting"], sort=False):
        row = {"model": model, "setting": setting, "images": len(g),
               "stall_rate": g.stalled.astype(float).mean() if "stalled" in g and g.stalled.notna().any()
               else np.nan,
               "accepted_steps": g.accepted_steps.mean() if "accepted_steps" in g else np.nan,
               "rejected_steps": g.rejected_steps.mean(), "zero_directions": g.zero_directions.mean(),
               "label_kept": g.label_kept.astype(float).mean()}
        if "beta" in g and g.beta.notna().any():
            wins = g.beta.fillna(-1).value_counts(normalize=True)
            row["winning_beta"] = ", ".join(f"{'own' if b < 0 else f'{b:g}'}: {w:.0%}"
                                            for b, w in wins.sort_index().items())
        rows.append(row)
    return pd.DataFrame(rows)


def transfer_matrix(attacks: pd.DataFrame, model: str, *, kind: str = "topk", epsilon: float | None = None,
                    metric: str = "topk") -> pd.DataFrame:
    """Mean ``metric`` per (attacked method, evaluated method) of one model's attacks of ``kind``."""
    rows = attacks[(attacks.model == model) & (attacks.kind == kind) & attacks.attacked.astype(bool)]
    if epsilon is not None:
        rows = rows[np.isclose(rows.epsilon, epsilon)]
    return rows.pivot_table(index="attacked_method", columns="evaluated_method", values=metric, aggfunc="mean")


def _transfer_rows(attacks, model, kind, epsilon, settings):
    rows = attacks[(attacks.model == model) & (attacks.kind == kind) & np.isclose(attacks.epsilon, epsilon)]
    if settings is not None:
        rows = rows[rows.setting.isin(settings)]
    return rows


def transfer_effects(attacks: pd.DataFrame, models: pd.DataFrame, transfer_models, *, baseline: str,
                     kind: str = "topk", epsilon: float, settings=None, metric: str = "topk",
                     rng: np.random.Generator, n_boot: int = 2000) -> pd.DataFrame:
    """Relative transfer ``(1 - off) / (1 - diag)`` per model, and its difference from the ``baseline`` model.

    1 = an attack on one method damages the others as much as the attacked one; 0 = it does not transfer.
    ``difference`` = model minus baseline (negative: attacks transfer *less* on the model).
    """
    out = []
    base = _transfer_rows(attacks, baseline, kind, epsilon, settings)
    for model in transfer_models:
        rows = _transfer_rows(attacks, model, kind, epsilon, settings)
        r = stats.relative_transfer(rows, metric, rng=rng, n_boot=n_boot,
                                    higher_is_robust=HIGHER_IS_ROBUST[metric])
        row = {"model": model, "relative_transfer": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high,
               "n_images": r.n_images}
        if model != baseline:
            d = stats.relative_transfer_difference(rows, base, metric, rng=rng, n_boot=n_boot,
                                                   higher_is_robust=HIGHER_IS_ROBUST[metric])
            row.update(difference=d.estimate, difference_low=d.ci_low, difference_high=d.ci_high,
                       difference_p=d.p_value)
        out.append(row)
    return attach_models(pd.DataFrame(out), models)


def epsilon_curve(attacks: pd.DataFrame, models: pd.DataFrame, groups: dict[str, list[str]], *, method: str,
                  kind: str, metric: str = "topk", rng: np.random.Generator, n_boot: int = 1000) -> pd.DataFrame:
    """Robustness vs epsilon per group (seeds and images bootstrapped), for ``method``'s ``kind`` attack."""
    rows = attacks[(attacks.attacked_method == method) & (attacks.evaluated_method == method) &
                   (attacks.kind == kind) & attacks.attacked.astype(bool)]
    out = []
    for group, names in groups.items():
        g = _group_rows(rows, models, names)
        for eps, e in g.groupby("epsilon"):
            r = stats.hierarchical_bootstrap(e, metric, rng=rng, n_boot=n_boot)
            out.append({"group": group, "epsilon": eps, "metric": metric, "mean": r.estimate,
                        "ci_low": r.ci_low, "ci_high": r.ci_high, "n_images": r.n_images,
                        "n_seeds": r.n_seeds})
    return pd.DataFrame(out)


def with_accuracy(models: pd.DataFrame, measures: pd.DataFrame) -> pd.DataFrame:
    """Fill the clean test accuracy of models without a training record of their own (softplus copies)
    from the measure tables' ``test_accuracy`` column (the full test set, computed by the measure stage)."""
    if "test_accuracy" not in measures.columns:
        return models
    acc = measures.groupby("model").test_accuracy.first()
    filled = models.model.map(acc)
    return models.assign(test_accuracy=models.test_accuracy.fillna(filled))


def model_geometry(measures: pd.DataFrame, models: pd.DataFrame, columns) -> pd.DataFrame:
    """Per model: the median over its correctly classified evaluation images of each geometry column."""
    ok = measures[measures.correct.astype(bool)] if "correct" in measures.columns else measures
    geo = ok.groupby("model")[list(columns)].median().reset_index()
    return attach_models(geo, models)
