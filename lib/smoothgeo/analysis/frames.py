"""Tidy per-image and per-model tables that the claims and the notebooks share (nothing here attacks or trains).

Inputs: the attack table (:func:`smoothgeo.analysis.results.load_attacks`), the measure table
(:func:`~smoothgeo.analysis.results.load_measures`) and the model registry
(:func:`~smoothgeo.analysis.results.model_table`).

* :func:`beyond_noise`: per (model, image), the attack's top-k and Kendall beside the random floor's, and the
  **damage beyond noise** ``topk_beyond = topk(random) - topk(attack)`` (the primary metric of
  docs/protocol.md; larger = the attack removes more of the top-k set than noise of the same budget), likewise
  ``kendall_beyond`` with the ensemble's worst Kendall (``kendall_worst``).
* :func:`model_summary`: one row per model: accuracy, plateau, robustness under the headline ensemble and its
  floor, the attack/random damage ratio, the geometry means, the stall rate and how often the surrogate grid's
  edge won.
* :func:`transfer_table`: per model, the damage beyond noise of every (attacked, evaluated) method pair, and the
  relative transfer ``excess(a -> e) / excess(e -> e)`` (1 = the transferred attack does as much damage beyond
  noise as the direct one).
* :func:`strength_check`: the headline ensemble against the much stronger reference attack on its images.
* :func:`explanation_summary`: per model and attribution method, the faithfulness and stability metrics of the
  measure stage's explanation tables (means; RIS/ROS/RRS also as log10 of the mean, the way Quantus reports
  them).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from smoothgeo.store.names import family_and_seed

__all__ = ["with_family", "with_accuracy", "own_rows", "beyond_noise", "model_summary", "transfer_table",
           "strength_check", "edge_wins", "explanation_summary"]


def with_family(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``group`` and ``seed`` parsed from ``model`` (``ssr10-s2`` -> ``ssr10``, 2)."""
    parsed = frame["model"].map(family_and_seed)
    return frame.assign(group=parsed.map(lambda t: t[0]), seed=parsed.map(lambda t: t[1]))


def with_accuracy(models: pd.DataFrame, measures: pd.DataFrame) -> pd.DataFrame:
    """Fill the clean test accuracy of models without a training record of their own (softplus copies)
    from the measure tables' ``test_accuracy`` column (the full test set, computed by the measure stage)."""
    if "test_accuracy" not in measures.columns:
        return models
    acc = measures.groupby("model").test_accuracy.first()
    return models.assign(test_accuracy=models.test_accuracy.fillna(models.model.map(acc)))


def own_rows(attacks: pd.DataFrame, setting: str, *, evaluated_method: str | None = None) -> pd.DataFrame:
    """Rows of one setting evaluated on the attacked method itself (or on ``evaluated_method``)."""
    rows = attacks[attacks.setting == setting]
    em = rows.attacked_method if evaluated_method is None else evaluated_method
    return rows[rows.evaluated_method == em]


def beyond_noise(attacks: pd.DataFrame, attack_setting: str, random_setting: str, *,
                 evaluated_method: str | None = None) -> pd.DataFrame:
    """Per (model, image) of ``attack_setting``: the attack's and the random floor's top-k and Kendall and the
    damage beyond noise (see the module docstring). Only images attacked in both settings are kept."""
    a = own_rows(attacks, attack_setting, evaluated_method=evaluated_method)
    r = own_rows(attacks, random_setting, evaluated_method=evaluated_method)
    if a.empty or r.empty:
        raise ValueError(f"no rows for {attack_setting if a.empty else random_setting!r}"
                         f"{'' if evaluated_method is None else ' on ' + evaluated_method}: is the setting "
                         "configured for these models in params.yaml?")
    lens = ["lens_topk"] if "lens_topk" in a.columns and "lens_topk" in r.columns else []
    a = a[["model", "image", "topk", "kendall", "kendall_worst", "attacked", "clean_conf", "beta", "stalled", *lens]]
    r = r[["model", "image", "topk", "kendall", "attacked", *lens]].rename(
        columns={"topk": "topk_random", "kendall": "kendall_random", "attacked": "attacked_random",
                 "lens_topk": "lens_topk_random"})
    m = a.merge(r, on=["model", "image"])
    m = m[m.attacked.astype(bool) & m.attacked_random.astype(bool)].drop(columns="attacked_random")
    worst = m.kendall_worst.where(m.kendall_worst.notna(), m.kendall)
    m = m.assign(kendall_worst=worst, topk_beyond=m.topk_random - m.topk, kendall_beyond=m.kendall_random - worst)
    if lens:
        m["lens_beyond"] = m.lens_topk_random - m.lens_topk
    return with_family(m.reset_index(drop=True))


def edge_wins(frame: pd.DataFrame, grid) -> pd.Series:
    """Per model: the share of attacked images whose winning surrogate was the grid's largest beta."""
    top = max(float(b) for b in grid if b is not None)
    return frame.groupby("model").beta.apply(lambda b: float(np.isclose(b.astype(float), top).mean()))


def model_summary(models: pd.DataFrame, attacks: pd.DataFrame, measures: pd.DataFrame, *, head: str, floor: str,
                  grid, geometry=("lambda_max", "relative_curvature", "lipschitz_random",
                                  "lipschitz_adversarial")) -> pd.DataFrame:
    """One row per model (see the module docstring); ``head``/``floor``: the headline setting and its floor."""
    b = beyond_noise(attacks, head, floor)
    rob = b.groupby("model").agg(n_attacked=("image", "size"), topk=("topk", "mean"),
                                 topk_random=("topk_random", "mean"), topk_beyond=("topk_beyond", "mean"),
                                 kendall_worst=("kendall_worst", "mean"), kendall_beyond=("kendall_beyond", "mean"),
                                 stall_rate=("stalled", lambda s: float(pd.Series(s).fillna(False).astype(bool)
                                                                       .mean())))
    rob["damage_ratio"] = (1 - rob.topk) / (1 - rob.topk_random)
    if "lens_topk" in b.columns:
        rob = rob.join(b.groupby("model").agg(lens_topk=("lens_topk", "mean"), lens_beyond=("lens_beyond", "mean")))
    rob["edge_wins"] = edge_wins(b, grid)
    m = measures[measures["correct"].astype(bool)] if "correct" in measures.columns else measures
    robust = [c for c in m.columns if c.startswith("robust_eps")]   # accuracy under PGD: over every image
    geo = m.groupby("model")[[g for g in geometry if g in m.columns]].mean()
    if robust:
        geo = geo.join(measures.groupby("model")[robust].mean().rename(
            columns=lambda c: c.replace("robust_eps", "robust_accuracy_eps")))
    keep = [c for c in ("model", "family", "strength", "seed", "test_accuracy", "val_accuracy", "plateau_gain")
            if c in models.columns]
    out = models[keep].merge(rob.reset_index(), on="model", how="left").merge(geo.reset_index(), on="model",
                                                                             how="left")
    return with_family(out)


def transfer_table(attacks: pd.DataFrame, *, attack_settings: dict[str, str], random_setting: str,
                   methods=("SM", "IG", "SG", "UG")) -> pd.DataFrame:
    """Per model and (attacked, evaluated) pair: mean damage beyond noise, and the relative transfer of each
    off-diagonal pair, ``excess(a -> e) / excess(e -> e)``. ``attack_settings``: attacked method -> setting id;
    ``random_setting``: the random floor evaluated on every method."""
    rand = attacks[attacks.setting == random_setting]
    rand = rand[rand.attacked.astype(bool)][["model", "image", "evaluated_method", "topk"]].rename(
        columns={"topk": "topk_random"})
    rows = []
    for am, sid in attack_settings.items():
        a = attacks[(attacks.setting == sid) & attacks.attacked.astype(bool)]
        a = a[a.evaluated_method.isin(methods)][["model", "image", "evaluated_method", "topk"]]
        j = a.merge(rand, on=["model", "image", "evaluated_method"])
        j = j.assign(excess=j.topk_random - j.topk, attacked_method=am)
        rows.append(j.groupby(["model", "attacked_method", "evaluated_method"], as_index=False).agg(
            topk=("topk", "mean"), topk_random=("topk_random", "mean"), excess=("excess", "mean"),
            n_images=("image", "size")))
    t = pd.concat(rows, ignore_index=True)
    direct = t[t.attacked_method == t.evaluated_method][["model", "evaluated_method", "excess"]].rename(
        columns={"excess": "direct_excess"})
    t = t.merge(direct, on=["model", "evaluated_method"], how="left")
    t["relative_transfer"] = np.where(t.attacked_method != t.evaluated_method, t.excess / t.direct_excess, np.nan)
    return with_family(t)


def strength_check(attacks: pd.DataFrame, *, ensemble: str, reference: str, rng: np.random.Generator,
                   n_boot: int = 10000) -> pd.DataFrame:
    """Per model: the ensemble's and the reference's mean top-k on the reference's images (both attacked), the
    difference ensemble - reference (> 0: the reference attack finds more damage) with a bootstrap interval
    over images."""
    a, r = own_rows(attacks, ensemble), own_rows(attacks, reference)
    j = a[["model", "image", "topk", "attacked"]].merge(r[["model", "image", "topk", "attacked"]],
                                                          on=["model", "image"], suffixes=("_ens", "_ref"))
    j = j[j.attacked_ens.astype(bool) & j.attacked_ref.astype(bool)]
    rows = []
    for model, g in j.groupby("model"):
        d = (g.topk_ens - g.topk_ref).to_numpy(float)
        boot = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)]) if len(d) else []
        lo, hi = (np.quantile(boot, [0.025, 0.975]) if len(d) else (np.nan, np.nan))
        rows.append({"model": model, "n_images": len(d), "topk_ensemble": g.topk_ens.mean(),
                     "topk_reference": g.topk_ref.mean(), "difference": d.mean() if len(d) else np.nan,
                     "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def explanation_summary(explanations: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method): mean of every faithfulness / stability column, RIS/ROS/RRS also as
    ``log10_<metric>`` = log10 of the mean over images (Quantus' report), and ``n_images``."""
    cols = ["clean_prob", "deletion_auc", "insertion_auc", "deletion_auc_relative", "insertion_auc_relative",
            "infidelity", "max_sensitivity", "avg_sensitivity", "ris", "ros", "rrs", "changed", "sparseness"]
    if explanations.empty:
        return pd.DataFrame(columns=["model", "method", "n_images", *cols, "log10_ris", "log10_ros", "log10_rrs"])
    e = explanations.assign(**{c: pd.to_numeric(explanations[c], errors="coerce") for c in cols})
    g = e.groupby(["model", "method"])
    out = g[cols].mean().join(g.image.size().rename("n_images")).reset_index()
    for c in ("ris", "ros", "rrs"):
        v = out[c].astype(float)
        out[f"log10_{c}"] = np.log10(v.where(v > 0))
    return with_family(out)
