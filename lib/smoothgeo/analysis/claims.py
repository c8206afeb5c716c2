"""The claims table: one row per claim of the paper, each with an oriented effect, a 95% interval, a Holm-adjusted
p-value and a verdict that follows from them by a rule fixed in advance.

Columns (exactly, in this order): :data:`COLUMNS` =
``rq, claim, metric, effect, ci_low, ci_high, p_value, p_adjusted, n_images, n_seeds, rule, verdict``.

* ``claim`` states what the *paper* says; ``effect`` is oriented so that **positive is the paper's direction**
  (e.g. for top-k intersection a gain is positive; for mass-centre dislocation, where lower is more robust,
  the sign is flipped: :data:`ROBUST_DIRECTION`).
* ``p_adjusted``: Holm across all rows of the table (:func:`claims_table`).
* ``verdict`` (:func:`verdict`), with alpha = 0.05:

  - ``reproduces``: ci_low > 0 and p_adjusted < 0.05;
  - ``partly``: ci_low > 0 but p_adjusted >= 0.05 (the interval is on the paper's side, yet the effect does not
    survive the correction for the number of claims tested);
  - ``contradicted``: ci_high < 0 (the interval is on the other side);
  - ``not shown``: otherwise (the interval contains 0, or there were too few data to compute it).

Each claim type has a function taking tidy frames and returning one row (a dict, before Holm):
:func:`robustness_gain` (recipe vs the matched natural baseline), :func:`smoothing_gain` (SG/UG vs SM),
:func:`curvature_within` (per image, within models), :func:`curvature_across` (across models, partial
correlation controlling for clean accuracy), :func:`transfer_difference` (relative transfer),
:func:`bound_predictiveness` and :func:`bound_coverage` (RQ2 bound test), :func:`frontier_comparison`
(matched accuracy / cost). Model names ``<family>-s<seed>[+softplus<beta>]`` give the family and seed
(:func:`parse_model`). Assembling the table::

    rng = np.random.default_rng(params["seed"])
    attacks = read_tidy(Path("results/attacks").glob("*.csv.gz"))
    measures = read_tidy(Path("results/measures").glob("*.csv.gz"))
    topk = {"kind": "topk", "epsilon": 0.1}
    rows = [robustness_gain(attacks, recipe="ssr10", where=topk, rng=rng),
            smoothing_gain(attacks, variant="SG", where=topk, metric="kendall", rng=rng),
            curvature_within(measures, attacks, family="natural", rng=rng,
                             where={**topk, "attacked_method": "SM", "evaluated_method": "SM"}),
            transfer_difference(attacks, smooth="ssr10", where={"kind": "topk"}, rng=rng)]
    table = claims_table(rows)            # Holm + verdicts, exact columns
    write_claims(table, "results/claims.csv")
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from smoothgeo.analysis import stats
from smoothgeo.analysis.stats import BootResult

__all__ = [
    "COLUMNS", "ROBUST_DIRECTION", "VERDICT_RULE", "VERDICTS", "parse_model", "with_family", "select", "read_tidy",
    "verdict", "claim_row", "paired_claim", "robustness_gain", "smoothing_gain", "curvature_within",
    "model_table", "curvature_across", "transfer_difference", "relative_transfer_table", "bound_predictiveness",
    "bound_coverage", "frontier_comparison", "claims_table",
    "plain_words", "write_claims",
]

COLUMNS = ["rq", "claim", "metric", "effect", "ci_low", "ci_high", "p_value", "p_adjusted", "n_images", "n_seeds",
           "rule", "verdict"]
VERDICTS = ("reproduces", "partly", "not shown", "contradicted")
VERDICT_RULE = "CI>0 & Holm p<0.05: reproduces; CI>0 only: partly; CI<0: contradicted; else not shown"

#: +1 where a higher value means a more robust attribution, -1 where lower does
ROBUST_DIRECTION = {"topk": 1, "kendall": 1, "spearman": 1, "mass_center": -1, "cosine": -1, "target_distance": 1,
                    "target_remaining": 1,
                    "bound_map_change": -1, "bound_grad_change": -1, "bound_relative_grad_change": -1}

_MODEL = re.compile(r"^(?P<family>.+?)-s(?P<seed>\d+)(?P<suffix>\+.*)?$")


def _direction(metric: str) -> int:
    if metric not in ROBUST_DIRECTION:
        raise ValueError(f"unknown robustness metric {metric!r}; choose one of {sorted(ROBUST_DIRECTION)}")
    return ROBUST_DIRECTION[metric]


def parse_model(name: str) -> tuple[str, int]:
    """``"ssr10-s2"`` -> ("ssr10", 2); ``"natural-s0+softplus3"`` -> ("natural+softplus3", 0); no ``-sN``: seed 0."""
    m = _MODEL.match(str(name))
    if not m:
        return str(name), 0
    return m["family"] + (m["suffix"] or ""), int(m["seed"])


def with_family(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``family`` and ``seed`` columns parsed from ``model`` (kept if already there)."""
    if "family" in frame.columns and "seed" in frame.columns:
        return frame
    if "model" not in frame.columns:
        raise KeyError(f"frame needs a 'model' column to derive family and seed; it has {list(frame.columns)}")
    parsed = frame["model"].map(parse_model)
    return frame.assign(family=parsed.map(lambda t: t[0]), seed=parsed.map(lambda t: t[1]))


def select(frame: pd.DataFrame, where: dict | None = None) -> pd.DataFrame:
    """Rows matching every ``column: value`` (a list/tuple/set value means any of them)."""
    frame = with_family(frame)
    for col, val in (where or {}).items():
        if col not in frame.columns:
            raise KeyError(f"cannot filter on {col!r}: the frame has columns {list(frame.columns)}")
        if isinstance(val, (list, tuple, set)):
            frame = frame[frame[col].isin(list(val))]
        elif isinstance(val, float):
            frame = frame[np.isclose(frame[col].astype(float), val)]
        else:
            frame = frame[frame[col] == val]
    return frame


def read_tidy(paths) -> pd.DataFrame:
    """Concatenate tidy CSV(.gz) files (sorted by path, so the result does not depend on listing order)."""
    paths = sorted(Path(p) for p in paths)
    if not paths:
        raise FileNotFoundError("no tidy result files to read; run the stages that write them (`dvc repro`)")
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def verdict(ci_low: float, ci_high: float, p_adjusted: float, *, alpha: float = 0.05) -> str:
    """The verdict rule of the module doc (NaN interval: ``not shown``)."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "not shown"
    if ci_low > 0:
        return "reproduces" if np.isfinite(p_adjusted) and p_adjusted < alpha else "partly"
    if ci_high < 0:
        return "contradicted"
    return "not shown"


def claim_row(rq: str, claim: str, metric: str, result: BootResult, *, rule: str, sign: int = 1) -> dict:
    """A table row from a :class:`~smoothgeo.analysis.stats.BootResult`; ``sign=-1`` flips effect and interval."""
    lo, hi = sorted((sign * result.ci_low, sign * result.ci_high)) if np.isfinite(result.ci_low) else \
        (float("nan"), float("nan"))
    return {"rq": rq, "claim": claim, "metric": metric, "effect": sign * result.estimate, "ci_low": lo,
            "ci_high": hi, "p_value": result.p_value, "n_images": int(result.n_images),
            "n_seeds": int(result.n_seeds), "rule": f"{rule}; {VERDICT_RULE}"}


def _worst_per_image(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (model, image): the worst ``metric`` over the remaining settings (the attack ensemble)."""
    frame = frame.dropna(subset=[metric])
    keys = ["model", "family", "seed", "image"]
    if not frame.duplicated(keys).any():
        return frame
    worst = "min" if _direction(metric) > 0 else "max"
    agg = {metric: worst}
    if "attacked" in frame.columns:
        agg["attacked"] = "all"
    return frame.groupby(keys, as_index=False).agg(agg)


def paired_claim(attacks: pd.DataFrame, *, treatment: dict, baseline: dict, metric: str, rq: str, claim: str,
                 rng: np.random.Generator, where: dict | None = None, n_boot: int = 2000, label: str = "") -> dict:
    """Paired per-image gain of ``treatment`` rows over ``baseline`` rows in ``metric`` (oriented), as a row.

    ``treatment``/``baseline``/``where`` are :func:`select` filters (``family`` may be used). Where several
    settings remain per image (an attack ensemble: betas, restarts as separate settings) the worst counts.
    Seeds are paired by index when both sides have the same number, else averaged per image
    (:func:`smoothgeo.analysis.stats.paired_frame`); only images both sides classify correctly (``attacked``) count.
    """
    sign = _direction(metric)
    base = select(attacks, where)
    t = _worst_per_image(select(base, treatment), metric)
    b = _worst_per_image(select(base, baseline), metric)
    if t.empty or b.empty:
        raise ValueError(f"no rows for {'treatment' if t.empty else 'baseline'} {treatment if t.empty else baseline} "
                         f"with {where}; check the filters against the attack table")
    pairing = "index" if t.seed.nunique() == b.seed.nunique() else "mean"
    res = stats.paired_difference(t, b, metric, rng=rng, n_boot=n_boot, pairing=pairing)
    desc = (f"effect = {'+' if sign > 0 else '-'}(treatment - baseline) per image{label}, images both classify "
            f"correctly, seeds {'paired by index' if pairing == 'index' else 'averaged'}; hierarchical bootstrap")
    return claim_row(rq, claim, metric, res, rule=desc, sign=sign)


def robustness_gain(attacks: pd.DataFrame, *, recipe: str, rng: np.random.Generator, baseline: str = "natural",
                    method: str = "SM", metric: str = "topk", where: dict | None = None, n_boot: int = 2000,
                    claim: str | None = None, rq: str = "RQ4") -> dict:
    """Recipe family vs the matched natural baseline family, ``method`` attacked and evaluated, as a row."""
    where = {**(where or {}), "attacked_method": method, "evaluated_method": method}
    claim = claim or f"{recipe} training makes {method} attributions more robust than {baseline} training"
    return paired_claim(attacks, treatment={"family": recipe}, baseline={"family": baseline}, metric=metric, rq=rq,
                        claim=claim, rng=rng, where=where, n_boot=n_boot, label=f" ({recipe} - {baseline}, {method})")


def smoothing_gain(attacks: pd.DataFrame, *, variant: str, rng: np.random.Generator, reference: str = "SM",
                   family: str = "natural", metric: str = "topk", where: dict | None = None, n_boot: int = 2000,
                   claim: str | None = None, rq: str = "RQ4") -> dict:
    """SG/UG (``variant``, attacked and evaluated) vs ``reference`` (SM) on the same models and images."""
    where = {**(where or {}), "family": family}
    claim = claim or f"{variant} is more robust than {reference} under attack"
    return paired_claim(attacks, treatment={"attacked_method": variant, "evaluated_method": variant},
                        baseline={"attacked_method": reference, "evaluated_method": reference}, metric=metric,
                        rq=rq, claim=claim, rng=rng, where=where, n_boot=n_boot,
                        label=f" ({variant} - {reference} on {family})")


def _join_damage(measures, attacks, metric, where):
    """Per (model, image): measures joined with the worst attack metric of the selected settings."""
    m = with_family(measures)
    if "correct" in m.columns:
        m = m[m["correct"].astype(bool)]
    if attacks is None:
        if metric not in m.columns:
            raise KeyError(f"{metric!r} is not a measures column; pass the attack table")
        return m.dropna(subset=[metric])
    a = _worst_per_image(select(attacks, where), metric)
    if "attacked" in a.columns:
        a = a[a["attacked"].astype(bool)]
    return m.drop(columns=[c for c in (metric,) if c in m.columns]).merge(
        a[["model", "image", metric]], on=["model", "image"])


def curvature_within(measures: pd.DataFrame, attacks: pd.DataFrame | None, *, family: str,
                     rng: np.random.Generator, geometry: str = "lambda_max", metric: str = "topk",
                     where: dict | None = None, n_boot: int = 1000, n_perm: int = 1000, claim: str | None = None,
                     rq: str = "RQ1") -> dict:
    """Within each model of ``family``: per-image Spearman of ``geometry`` and the damage of the attack.

    Damage is ``metric`` oriented so larger = the map moved more (-top-k, +mass-centre, or a measures column
    such as ``bound_map_change`` with ``attacks=None``); effect = mean over seeds of Spearman(geometry,
    damage): positive = images with more curvature lose more of their map, the paper's direction.
    """
    sign = _direction(metric)
    f = _join_damage(measures, attacks, metric, where)
    f = f[f.family == family].assign(_damage=lambda d: -sign * d[metric])
    res = stats.within_spearman(f, geometry, "_damage", rng=rng, n_boot=n_boot, n_perm=n_perm)
    claim = claim or f"Images with larger {geometry} have less robust attributions (within {family} models)"
    rule = (f"effect = Spearman({geometry}, damage in {metric}) per image within each {family} model, mean over "
            f"seeds; bootstrap CI, permutation p")
    return claim_row(rq, claim, metric, res, rule=rule)


def model_table(measures: pd.DataFrame, attacks: pd.DataFrame, *, metric: str = "topk", where: dict | None = None,
                geometry=("lambda_max", "relative_curvature", "lipschitz_adversarial",
                          "lipschitz_adversarial_relative", "lipschitz_adversarial_map"),
                accuracy: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model: mean geometry over its correctly classified images, mean worst ``metric`` under the
    selected attacks, and ``clean_accuracy`` (from ``accuracy`` [columns model, clean_accuracy] when given,
    e.g. the training records' test accuracy, else the share of correct evaluation images)."""
    m = with_family(measures)
    acc = m.groupby("model")["correct"].mean().rename("clean_accuracy")
    if accuracy is not None:
        acc = accuracy.set_index("model")["clean_accuracy"]
    geo = m[m["correct"].astype(bool)].groupby("model")[list(geometry)].mean()
    a = _worst_per_image(select(attacks, where), metric)
    if "attacked" in a.columns:
        a = a[a["attacked"].astype(bool)]
    rob = a.groupby("model").agg(**{metric: (metric, "mean"), "n_images": ("image", "nunique")})
    out = geo.join(rob, how="inner").join(acc, how="left").reset_index()
    return with_family(out)


def curvature_across(models: pd.DataFrame, *, rng: np.random.Generator, geometry: str = "lambda_max",
                     metric: str = "topk", covariate: str | None = "clean_accuracy", n_boot: int = 2000,
                     n_perm: int = 5000, claim: str | None = None, rq: str = "RQ1") -> dict:
    """Across models (:func:`model_table` rows): Spearman of ``geometry`` and robustness, partial on
    ``covariate``; effect = -(partial rho) for a higher-is-robust metric: positive = smoother models are more
    robust at equal clean accuracy (the paper's direction). Models trained with different seeds are separate
    units; different recipes are not independent samples of anything, so read p as descriptive."""
    sign = _direction(metric)
    z = None if covariate is None else models[covariate].to_numpy(float)
    res = stats.partial_spearman(models[geometry].to_numpy(float), models[metric].to_numpy(float), z, rng=rng,
                                 n_boot=n_boot, n_perm=n_perm)
    n_img = int(models["n_images"].median()) if "n_images" in models.columns and len(models) else 0
    res = BootResult(res.estimate, res.ci_low, res.ci_high, res.p_value, n_img,
                     int(models["seed"].nunique()) if "seed" in models.columns else 0)
    claim = claim or f"Models with smaller {geometry} have more robust attributions"
    ctrl = f" controlling for {covariate}" if covariate else ""
    rule = (f"effect = -Spearman({geometry}, {metric}){ctrl} over {len(models)} models; "
            f"bootstrap CI over models, permutation p")
    return claim_row(rq, claim, metric, res, rule=rule, sign=-sign)


def transfer_difference(attacks: pd.DataFrame, *, smooth: str, rng: np.random.Generator, baseline: str = "natural",
                        metric: str = "topk", where: dict | None = None, n_boot: int = 2000,
                        claim: str | None = None, rq: str = "RQ3") -> dict:
    """Relative transfer ``(1-off)/(1-diag)`` of ``baseline`` minus that of ``smooth``: positive = attacks
    transfer relatively less between methods on the smoother model (the paper's direction)."""
    a = select(attacks, where)
    s, b = a[a.family == smooth], a[a.family == baseline]
    if s.empty or b.empty:
        raise ValueError(f"no transfer rows for {smooth if s.empty else baseline!r} with {where}")
    res = stats.relative_transfer_difference(b, s, metric, rng=rng, n_boot=n_boot,
                                             higher_is_robust=_direction(metric) > 0)
    claim = claim or f"Attacks transfer less between attribution methods on the smoother {smooth} model"
    rule = (f"effect = relative transfer (1-off)/(1-diag) of {baseline} minus {smooth} in {metric}; bootstrap "
            f"over shared images and seeds")
    return claim_row(rq, claim, metric, res, rule=rule)


def relative_transfer_table(attacks: pd.DataFrame, *, rng: np.random.Generator, metric: str = "topk",
                            where: dict | None = None, n_boot: int = 2000) -> pd.DataFrame:
    """Per family: relative transfer with its interval (descriptive; 1 = a transferred attack does as much
    damage as the direct one)."""
    a = select(attacks, where)
    rows = []
    for fam, f in a.groupby("family", sort=True):
        r = stats.relative_transfer(f, metric, rng=rng, n_boot=n_boot, higher_is_robust=_direction(metric) > 0)
        rows.append({"family": fam, "relative_transfer": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "n_images": r.n_images, "n_seeds": r.n_seeds})
    return pd.DataFrame(rows)


def _bound_frame(measures, family):
    m = with_family(measures)
    m = m[(m.family == family) & m["correct"].astype(bool)]
    if "bound_grad_change" not in m.columns or m["bound_grad_change"].notna().sum() == 0:
        raise ValueError(f"no bound-test columns for {family!r} in the measures; set params 'measures.bound_setting'")
    return m.dropna(subset=["bound_grad_change"])


def bound_predictiveness(measures: pd.DataFrame, *, family: str, rng: np.random.Generator, target: str = "map",
                         n_boot: int = 1000, n_perm: int = 1000, claim: str | None = None, rq: str = "RQ2") -> dict:
    """Does the independent ``L * ||delta||`` rank the realised change under the attack? Within-model Spearman
    of ``bound_predicted_grad_change`` against ``bound_grad_change`` (``target="gradient"``) or
    ``bound_map_change`` (``target="map"``): positive = the paper's direction."""
    if target not in ("gradient", "map"):
        raise ValueError(f"target must be 'gradient' or 'map', got {target!r}")
    realised = "bound_grad_change" if target == "gradient" else "bound_map_change"
    f = _bound_frame(measures, family)
    res = stats.within_spearman(f, "bound_predicted_grad_change", realised, rng=rng, n_boot=n_boot, n_perm=n_perm)
    claim = claim or (f"A larger gradient-Lipschitz constant lets the attack move the {target} further "
                      f"({family} models)")
    rule = (f"effect = Spearman(L*||delta||, realised {target} change) per attacked image, L from independent "
            f"neighbours, mean over seeds; bootstrap CI, permutation p")
    return claim_row(rq, claim, realised, res, rule=rule)


def bound_coverage(measures: pd.DataFrame, *, family: str, rng: np.random.Generator, nominal: float = 0.95,
                   n_boot: int = 1000, claim: str | None = None, rq: str = "RQ2") -> dict:
    """Share of attacked images whose gradient change stays within the independent ``L * ||delta||``, minus
    ``nominal``. The estimate of L is a maximum over sampled neighbours, a lower bound of the true constant, so
    a shortfall says the estimator misses the attack's directions as much as it says anything about the paper."""
    f = _bound_frame(measures, family).assign(_excess=lambda d: d["bound_within_bound"] - nominal)
    res = stats.hierarchical_bootstrap(f, "_excess", rng=rng, n_boot=n_boot)
    claim = claim or f"The gradient change under attack stays within L * ||delta|| ({family} models)"
    rule = f"effect = coverage - {nominal:g}, L from independent neighbours; hierarchical bootstrap"
    return claim_row(rq, claim, "bound_within_bound", res, rule=rule)


_STRENGTH = re.compile(r"^(?P<recipe>.*?[A-Za-z_])(?P<strength>\d+(?:\.\d*)?(?:e-?\d+)?)$")


def frontier_comparison(points: pd.DataFrame, family_a: str, family_b: str, *, rng: np.random.Generator,
                        metric: str = "topk", x: str = "accuracy", log_x: bool | None = None, n_boot: int = 2000,
                        family_col: str = "family", claim: str | None = None, rq: str = "RQ4"
                        ) -> tuple[dict, pd.DataFrame]:
    """Recipe a vs b along their trade-off curves at matched ``x`` (clean accuracy, or ``"cost"``: training
    cost, interpolated in log cost), using every strength (:func:`smoothgeo.analysis.stats.frontier_difference`), never a
    chosen best point. ``points``: :func:`smoothgeo.analysis.frames.frontier_points` rows (``family_col`` names the family, ``x``,
    ``metric`` and optional ``<col>_low``/``<col>_high``). Returns the row and the per-grid table."""
    sign = _direction(metric)
    log_x = (x != "accuracy") if log_x is None else log_x
    res, table = stats.frontier_difference(points, family_a, family_b, rng=rng, x=x, y=metric, log_x=log_x,
                                           n_boot=n_boot, family_col=family_col)
    claim = claim or f"{family_a} is more robust than {family_b} at matched {x}"
    rule = (f"effect = mean over the common {x} range of {family_a} - {family_b} {metric} (all strengths, "
            f"interpolated); parametric bootstrap from each point's CI")
    row = claim_row(rq, claim, metric, res, rule=rule, sign=sign)
    row["n_seeds"] = int(points["n_seeds"].min()) if "n_seeds" in points.columns else 0
    return row, table


def claims_table(rows, *, alpha: float = 0.05) -> pd.DataFrame:
    """Rows -> the claims table: Holm across rows, verdicts, exactly :data:`COLUMNS`."""
    table = pd.DataFrame(list(rows))
    if table.empty:
        return pd.DataFrame(columns=COLUMNS)
    missing = [c for c in COLUMNS if c not in ("p_adjusted", "verdict") and c not in table.columns]
    if missing:
        raise KeyError(f"claim rows lack {missing}; build them with claim_row or a claim function")
    table["p_adjusted"] = stats.holm(table["p_value"].to_numpy(float))
    table["verdict"] = [verdict(lo, hi, p, alpha=alpha)
                        for lo, hi, p in zip(table.ci_low, table.ci_high, table.p_adjusted)]
    table["n_images"] = table["n_images"].astype(int)
    table["n_seeds"] = table["n_seeds"].astype(int)
    return table[COLUMNS]


_FOUND = {
    "reproduces": "our data support it",
    "partly": "the interval lies on the paper's side, but the effect does not survive the Holm correction "
              "across claims",
    "not shown": "our data cannot tell: the interval includes no effect",
    "contradicted": "our data point the other way",
}


def plain_words(row) -> str:
    """"The paper says ... We found ..." for one claims-table row (a dict or a pandas row)."""
    r = dict(row)
    stat = (f"effect {r['effect']:+.3g} in {r['metric']} (95% CI {r['ci_low']:.3g} to {r['ci_high']:.3g}, "
            f"positive = the paper's direction; Holm-adjusted p = {r['p_adjusted']:.2g}; "
            f"{int(r['n_images'])} images, {int(r['n_seeds'])} seeds)")
    return f"The paper says: {r['claim']}. We found: {stat}, so {_FOUND[r['verdict']]} ({r['verdict']})."


def write_claims(table: pd.DataFrame, path="results/claims.csv") -> None:
    """Write the claims table atomically (full precision, fixed columns)."""
    from smoothgeo.store.atomic import atomic_write_csv

    if list(table.columns) != COLUMNS:
        raise ValueError(f"the claims table must have exactly the columns {COLUMNS}; got {list(table.columns)}")
    atomic_write_csv(path, table, float_format="%.6g")
