"""Inference with training seeds and models as the units (the claims of protocol version 2).

* :func:`seed_effect`: a paired effect between two groups of models, averaged over the images of each seed pair,
  with a Student-t interval and p-value over the seed-level values (df = seeds - 1). With 3-5 seeds a bootstrap
  over seeds has too few distinct resamples and gives intervals that are too narrow; the t interval is the
  honest small-sample choice, and it treats images as what they are here, a fixed shared set.
* :func:`within_correlation`: per model, Spearman of two per-image columns (optionally partial on a covariate);
  mean over models; p-value from permuting images *jointly* across models (the same permutation for every
  model, since the same images recur in every model), interval from resampling images jointly.
* :func:`across_correlation`: models as the unit: Spearman of two per-model columns, optionally partial on a
  covariate, bootstrap over models and a permutation p-value.

Every function takes a ``numpy.random.Generator`` (the claims stage derives one per claim from its id) and
returns :class:`Inference`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

__all__ = ["Inference", "seed_effect", "seed_values", "t_interval", "group_means", "within_correlation",
           "across_correlation", "claim_seed"]


@dataclass
class Inference:
    """An estimate, its 95 % interval, a two-sided p-value for "no effect", and its units."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_images: int
    n_seeds: int
    n_models: int
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


_NAN = float("nan")


def claim_seed(base: int, claim_id: str) -> int:
    """A seed of its own for each claim: a stable function of the run's seed and the claim's id, so adding or
    removing one claim never changes the random draws of another."""
    digest = np.frombuffer(claim_id.encode(), dtype=np.uint8).astype(np.uint64)
    return int(np.random.SeedSequence([int(base), *digest.tolist()]).generate_state(1)[0])


def _t(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return _NAN, _NAN, _NAN, _NAN
    mean = float(values.mean())
    if n < 2:
        return mean, _NAN, _NAN, _NAN
    se = float(values.std(ddof=1) / np.sqrt(n))
    if se == 0:
        return mean, mean, mean, 0.0 if mean != 0 else 1.0
    q = float(_st.t.ppf(0.5 + level / 2, n - 1))
    p = float(2 * _st.t.sf(abs(mean) / se, n - 1))
    return mean, mean - q * se, mean + q * se, p


def t_interval(values, level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, Student-t interval and two-sided p-value (mean = 0) of independent values (NaNs dropped); fewer than
    two values: NaN interval."""
    return _t(np.asarray(values, dtype=float), level)


def group_means(frame: pd.DataFrame, values, *, by: str, order=None, unit: str = "model") -> pd.DataFrame:
    """Per group (column ``by``) and value column: the mean over its units (one row per ``unit``, e.g. one model
    per training seed) with a Student-t 95 % interval over those units. Long format: ``by``, ``metric``, ``mean``,
    ``ci_low``, ``ci_high``, ``n`` (units). The seed-level summary the notebooks plot beside the claims."""
    per = frame.groupby([by, unit], sort=False)[list(values)].mean().reset_index()
    groups = list(order) if order is not None else list(dict.fromkeys(per[by]))
    rows = []
    for g in groups:
        sub = per[per[by] == g]
        for v in values:
            mean, lo, hi, _ = _t(sub[v].to_numpy(float))
            rows.append({by: g, "metric": v, "mean": mean, "ci_low": lo, "ci_high": hi,
                         "n": int(sub[v].notna().sum())})
    return pd.DataFrame(rows, columns=[by, "metric", "mean", "ci_low", "ci_high", "n"])


def seed_values(treatment: pd.DataFrame, baseline: pd.DataFrame, value: str, *, pairing: str = "seed"
                ) -> pd.DataFrame:
    """Per seed pair: the mean over shared images of ``treatment[value] - baseline[value]``.

    Frames have columns ``seed``, ``image``, ``value`` (and optionally ``attacked``: only images attacked in
    both count). ``pairing="seed"`` pairs equal seed numbers (same initialisation and batch order);
    ``"index"`` pairs the k-th smallest seeds. Returns columns ``seed_t``, ``seed_b``, ``diff``, ``n_images``.
    """
    def clean(f):
        f = f.dropna(subset=[value])
        if "attacked" in f.columns:
            f = f[f["attacked"].astype(bool)]
        return f
    t, b = clean(treatment), clean(baseline)
    st, sb = sorted(t.seed.unique()), sorted(b.seed.unique())
    pairs = [(s, s) for s in st if s in sb] if pairing == "seed" else list(zip(st, sb))
    rows = []
    for s1, s0 in pairs:
        m = t[t.seed == s1][["image", value]].merge(b[b.seed == s0][["image", value]], on="image",
                                                    suffixes=("_t", "_b"))
        if len(m):
            rows.append({"seed_t": s1, "seed_b": s0, "diff": float((m[f"{value}_t"] - m[f"{value}_b"]).mean()),
                         "n_images": len(m)})
    return pd.DataFrame(rows, columns=["seed_t", "seed_b", "diff", "n_images"])


def seed_effect(treatment: pd.DataFrame, baseline: pd.DataFrame, value: str, *, sign: int = 1,
                pairing: str = "seed") -> Inference:
    """``sign * (treatment - baseline)`` in ``value``: per seed pair the mean over shared images, then a
    Student-t interval and p-value over the seed pairs (see the module docstring)."""
    per_seed = seed_values(treatment, baseline, value, pairing=pairing)
    est, lo, hi, p = _t(sign * per_seed["diff"].to_numpy(float))
    n_img = int(per_seed["n_images"].median()) if len(per_seed) else 0
    return Inference(est, lo, hi, p, n_img, len(per_seed), 2 * len(per_seed), "seed-level paired t")


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank): ``scipy.stats.rankdata(v)``, without its per-call
    overhead (the permutation and bootstrap loops call this hundreds of thousands of times)."""
    v = np.asarray(v, dtype=float)
    if len(v) == 0:
        return np.empty(0)
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    group = np.cumsum(np.r_[True, sv[1:] != sv[:-1]]) - 1       # tie group of each sorted value
    counts = np.bincount(group)
    ranks = np.empty(len(v))
    ranks[order] = (np.cumsum(counts) - (counts - 1) / 2.0)[group]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    na, nb = np.sqrt(a @ a), np.sqrt(b @ b)
    if na < 1e-12 or nb < 1e-12:
        return _NAN
    return float(a @ b / (na * nb))


def _partial_r(x: np.ndarray, y: np.ndarray, z: np.ndarray | None) -> float:
    rx, ry = _ranks(x), _ranks(y)
    if z is not None:
        rz = np.column_stack([np.ones(len(z)), _ranks(z)])
        rx = rx - rz @ np.linalg.lstsq(rz, rx, rcond=None)[0]
        ry = ry - rz @ np.linalg.lstsq(rz, ry, rcond=None)[0]
    return _pearson(rx, ry)


def within_correlation(frame: pd.DataFrame, x: str, y: str, *, rng: np.random.Generator, covariate: str | None = None,
                       n_perm: int = 2000, n_boot: int = 2000, model_col: str = "model", image_col: str = "image",
                       level: float = 0.95) -> Inference:
    """Mean over models of the per-image (partial) Spearman of ``x`` and ``y`` (see the module docstring)."""
    cols = [x, y] + ([covariate] if covariate else [])
    f = frame.dropna(subset=cols)
    models = sorted(f[model_col].unique())
    images = np.array(sorted(f[image_col].unique()))
    if len(models) == 0 or len(images) < 4:
        return Inference(_NAN, _NAN, _NAN, _NAN, len(images), len(models), len(models), "joint permutation")
    pos = {img: i for i, img in enumerate(images)}
    # (models, images, columns) with NaN where a model lacks an image (e.g. misclassified)
    M = np.full((len(models), len(images), len(cols)), np.nan)
    for k, m in enumerate(models):
        g = f[f[model_col] == m]
        M[k, [pos[i] for i in g[image_col]], :] = g[cols].to_numpy(float)

    def stat(idx_y: np.ndarray, idx_all: np.ndarray) -> float:
        vals = []
        for k in range(len(models)):
            xs, zs = M[k, idx_all, 0], (M[k, idx_all, 2] if covariate else None)
            ys = M[k, idx_y, 1]
            ok = np.isfinite(xs) & np.isfinite(ys) & (np.isfinite(zs) if zs is not None else True)
            if ok.sum() >= 4:
                vals.append(_partial_r(xs[ok], ys[ok], zs[ok] if zs is not None else None))
        vals = [v for v in vals if np.isfinite(v)]
        return float(np.mean(vals)) if vals else _NAN

    ident = np.arange(len(images))
    est = stat(ident, ident)
    if not np.isfinite(est):
        return Inference(_NAN, _NAN, _NAN, _NAN, len(images), len(models), len(models), "joint permutation")
    perm = np.array([stat(rng.permutation(ident), ident) for _ in range(n_perm)])
    p = float((np.sum(np.abs(perm) >= abs(est) - 1e-12) + 1) / (n_perm + 1))
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(images), len(images))
        boot.append(stat(idx, idx))
    boot = np.array(boot)
    boot = boot[np.isfinite(boot)]
    lo, hi = (np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) if len(boot) else (_NAN, _NAN))
    return Inference(est, float(lo), float(hi), p, len(images), len(models), len(models),
                     "per-model Spearman" + (f" partial on {covariate}" if covariate else "")
                     + ", mean over models; joint image permutation, joint image bootstrap")


def across_correlation(models: pd.DataFrame, x: str, y: str, *, rng: np.random.Generator,
                       covariate: str | None = None, n_perm: int = 10000, n_boot: int = 10000,
                       level: float = 0.95) -> Inference:
    """(Partial) Spearman of two per-model columns with models as the unit (see the module docstring)."""
    cols = [x, y] + ([covariate] if covariate else [])
    f = models.dropna(subset=cols)
    n = len(f)
    if n < 5:
        return Inference(_NAN, _NAN, _NAN, _NAN, 0, 0, n, "across models")
    xs, ys = f[x].to_numpy(float), f[y].to_numpy(float)
    zs = f[covariate].to_numpy(float) if covariate else None
    est = _partial_r(xs, ys, zs)
    perm = np.array([_partial_r(xs, rng.permutation(ys), zs) for _ in range(n_perm)])
    perm = perm[np.isfinite(perm)]
    p = float((np.sum(np.abs(perm) >= abs(est) - 1e-12) + 1) / (len(perm) + 1))
    boot = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        boot.append(_partial_r(xs[i], ys[i], None if zs is None else zs[i]))
    boot = np.array(boot)
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    n_seeds = int(f["seed"].nunique()) if "seed" in f.columns else 0
    return Inference(est, float(lo), float(hi), p, 0, n_seeds, n,
                     "Spearman over models" + (f" partial on {covariate}" if covariate else "")
                     + "; bootstrap over models, permutation p")
