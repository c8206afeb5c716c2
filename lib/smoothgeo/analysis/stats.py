"""Statistics for the claims: bootstrap over seeds and images, paired differences, Holm, partial correlation,
relative transfer and matched comparisons along accuracy-robustness frontiers.

The unit of variation is stated, not assumed: *seeds* are independent trainings of a recipe, *images* are the
shared evaluation images (the same images for every model). Every estimate comes with a 95% percentile
interval from a bootstrap that resamples both, and every random draw comes from the ``numpy.random.Generator``
the caller passes (seeded from params.yaml).

Design choices (decided before looking at any result):

* **Hierarchical bootstrap.** Each replicate draws seeds with replacement and then images with replacement.
  Because the images are the *same* images for every seed, the default (``image_draws="shared"``) draws one
  image resample per replicate and uses it for every drawn seed (a crossed design: an image that is hard for
  every seed counts as one image, not as one per seed). ``image_draws="independent"`` draws the images afresh
  for every drawn seed (the classic nested bootstrap); it is narrower when image effects are shared across
  seeds. With one seed only the images are resampled.
* **Estimate** = mean over seeds of the per-seed mean over images (seeds weigh equally).
* **Bootstrap p-value** for "effect = 0" (two-sided): ``2 * min(P*(T <= 0), P*(T >= 0))`` over the replicates,
  with the +1 correction so it is never 0; this inverts the percentile interval, so a 95% interval that excludes
  0 goes with p < 0.05 (up to Monte-Carlo error).
* **Paired differences** between two model groups pair *seeds by index* (seed 0 of A with seed 0 of B, ...:
  seeds are exchangeable, so any fixed pairing is a valid random pairing) and, within a pair, keep only the
  images both models classify correctly; the per-image differences then go through the hierarchical bootstrap
  with the seed pair as the unit. ``pairing="mean"`` instead averages each image over the seeds of a group that
  classify it correctly (for groups with different seed counts).
* **Correlations** get a bootstrap interval and a permutation p-value (the exact null "no association").
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

__all__ = [
    "BootResult", "hierarchical_bootstrap", "paired_difference", "paired_frame", "holm", "bootstrap_p",
    "percentile_ci", "partial_spearman", "within_spearman", "relative_transfer", "relative_transfer_difference",
    "frontier_difference", "matched_accuracy", "matched_cost", "seed_image_matrix", "bound_summary",
]


@dataclass
class BootResult:
    """An estimate with its 95% (or ``level``) percentile interval and two-sided p-value for "effect = 0"."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_images: int
    n_seeds: int

    def as_dict(self) -> dict:
        return asdict(self)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def percentile_ci(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored; all NaN gives NaN)."""
    boot = np.asarray(boot, float)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(boot, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_p(boot: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value for ``effect = null``: ``2 min(P(T* <= null), P(T* >= null))``, +1 corrected."""
    boot = np.asarray(boot, float)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan")
    below = (np.sum(boot <= null) + 1) / (boot.size + 1)
    above = (np.sum(boot >= null) + 1) / (boot.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def seed_image_matrix(frame: pd.DataFrame, values, *, seed_col: str = "seed", image_col: str = "image",
                      images=None) -> tuple[np.ndarray, list, np.ndarray]:
    """Tidy rows -> array (k values, S seeds, I images) with NaN where a (seed, image) has no row.

    Duplicate (seed, image) rows are averaged. ``images`` fixes the image axis (default: sorted union).
    A frame without ``seed_col`` counts as one seed.
    """
    values = [values] if isinstance(values, str) else list(values)
    missing = [c for c in [image_col, *values] if c not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if seed_col not in frame.columns:
        frame = frame.assign(**{seed_col: 0})
    g = frame.groupby([seed_col, image_col])[values].mean()
    seeds = sorted(g.index.get_level_values(0).unique())
    imgs = np.array(sorted(g.index.get_level_values(1).unique()) if images is None else list(images))
    out = np.full((len(values), len(seeds), len(imgs)), np.nan)
    for j, v in enumerate(values):
        wide = g[v].unstack(image_col).reindex(index=seeds, columns=imgs)
        out[j] = wide.to_numpy(float)
    return out, seeds, imgs


def _draw(rng, n_boot: int, n_seeds: int, n_images: int, image_draws: str):
    """Seed indices (B, S) and image counts (B, I) [shared] or (B, S, I) [independent]."""
    if image_draws not in ("shared", "independent"):
        raise ValueError(f"image_draws must be 'shared' or 'independent', got {image_draws!r}")
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), int)
    shape = (n_boot, n_images) if image_draws == "shared" else (n_boot, n_seeds, n_images)
    counts = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=shape[:-1])
    return seeds, counts.astype(float)


def _slot_means(V: np.ndarray, seeds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-replicate, per-drawn-seed weighted image means: (B, S_slots, k) from V (k, S, I)."""
    mask = np.isfinite(V).astype(float)
    Vz = np.where(np.isfinite(V), V, 0.0)
    if counts.ndim == 2:  # shared image draw: (B, I)
        num = np.einsum("bi,ksi->bsk", counts, Vz)     # (B, S, k) for every seed
        den = np.einsum("bi,ksi->bsk", counts, mask)
        num = np.take_along_axis(num, seeds[:, :, None], 1)
        den = np.take_along_axis(den, seeds[:, :, None], 1)
    else:                 # independent draws: (B, S_slots, I)
        num = np.einsum("bji,kbji->bjk", counts, Vz[:, seeds])
        den = np.einsum("bji,kbji->bjk", counts, mask[:, seeds])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(a, axis):
    """``np.nanmean`` without the all-NaN warning (an all-NaN slice gives NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _observed_means(V: np.ndarray) -> np.ndarray:
    """Per-seed image means (S, k) of V (k, S, I)."""
    return _nanmean(V, 2).T


def _counts(V: np.ndarray) -> tuple[int, int]:
    finite = np.isfinite(V).any(axis=0)               # (S, I)
    return int(finite.any(axis=0).sum()), int(finite.any(axis=1).sum())


def hierarchical_bootstrap(frame: pd.DataFrame, value: str, *, rng: np.random.Generator, n_boot: int = 2000,
                           seed_col: str = "seed", image_col: str = "image", image_draws: str = "shared",
                           level: float = 0.95, null: float = 0.0) -> BootResult:
    """Mean of ``value`` over seeds and images with a hierarchical bootstrap interval and p-value.

    Args:
        frame: tidy rows with ``image_col``, ``value`` and (optionally) ``seed_col``; NaN values are dropped.
        value: the column to average.
        rng: numpy Generator for every draw.
        n_boot: bootstrap replicates.
        image_draws: "shared" (default; one image resample per replicate for all seeds: the images are the same
            across seeds) or "independent" (a fresh image resample per drawn seed).
        level: interval coverage.
        null: the effect value tested by the p-value.
    Returns:
        :class:`BootResult` (estimate = mean over seeds of per-seed image means).
    """
    rng = _check_rng(rng)
    V, _, _ = seed_image_matrix(frame.dropna(subset=[value]), value, seed_col=seed_col, image_col=image_col)
    return _bootstrap_mean(V, rng=rng, n_boot=n_boot, image_draws=image_draws, level=level, null=null)


def _bootstrap_mean(V, *, rng, n_boot, image_draws, level, null) -> BootResult:
    n_images, n_seeds = _counts(V)
    if n_images == 0:
        nan = float("nan")
        return BootResult(nan, nan, nan, nan, 0, 0)
    est = float(_nanmean(_observed_means(V)[:, 0], 0))
    seeds, counts = _draw(rng, n_boot, V.shape[1], V.shape[2], image_draws)
    boot = _nanmean(_slot_means(V, seeds, counts)[:, :, 0], 1)
    lo, hi = percentile_ci(boot, level)
    return BootResult(est, lo, hi, bootstrap_p(boot, null), n_images, n_seeds)


def paired_frame(treatment: pd.DataFrame, baseline: pd.DataFrame, value: str, *, seed_col: str = "seed",
                 image_col: str = "image", correct_col: str | None = "attacked", pairing: str = "index"
                 ) -> pd.DataFrame:
    """Per-image differences ``treatment - baseline`` on images both classify correctly (see module doc).

    Returns a tidy frame with columns ``seed`` (the pair index, or 0 with ``pairing="mean"``), ``image`` and
    ``diff``. Rows whose ``correct_col`` is False or whose value is NaN are dropped first.
    """
    if pairing not in ("index", "mean"):
        raise ValueError(f"pairing must be 'index' or 'mean', got {pairing!r}")

    def clean(f):
        if seed_col not in f.columns:
            f = f.assign(**{seed_col: 0})
        if correct_col is not None and correct_col in f.columns:
            f = f[f[correct_col].astype(bool)]
        return f.dropna(subset=[value])

    def seeds(f):  # the seeds a group was trained with, whether or not any of their images survives clean()
        return sorted(f[seed_col].unique()) if seed_col in f.columns else [0]

    ts, bs = seeds(treatment), seeds(baseline)
    t, b = clean(treatment), clean(baseline)
    if pairing == "mean":
        tm = t.groupby(image_col)[value].mean()
        bm = b.groupby(image_col)[value].mean()
        common = tm.index.intersection(bm.index)
        return pd.DataFrame({"seed": 0, "image": common, "diff": (tm[common] - bm[common]).to_numpy()})
    if len(ts) != len(bs):
        raise ValueError(f"pairing='index' needs the same number of seeds in both groups, got {len(ts)} and "
                         f"{len(bs)}; pass pairing='mean' or train the missing seeds")
    frames = []
    for k, (st, sb) in enumerate(zip(ts, bs)):
        tm = t[t[seed_col] == st].groupby(image_col)[value].mean()
        bm = b[b[seed_col] == sb].groupby(image_col)[value].mean()
        common = tm.index.intersection(bm.index)
        frames.append(pd.DataFrame({"seed": k, "image": common, "diff": (tm[common] - bm[common]).to_numpy()}))
    if not frames:
        return pd.DataFrame({"seed": pd.Series(dtype=int), "image": pd.Series(dtype=int),
                             "diff": pd.Series(dtype=float)})
    return pd.concat(frames, ignore_index=True)


def paired_difference(treatment: pd.DataFrame, baseline: pd.DataFrame, value: str, *, rng: np.random.Generator,
                      n_boot: int = 2000, seed_col: str = "seed", image_col: str = "image",
                      correct_col: str | None = "attacked", pairing: str = "index", image_draws: str = "shared",
                      level: float = 0.95) -> BootResult:
    """Mean paired difference ``treatment - baseline`` of ``value`` on shared, correctly classified images.

    See :func:`paired_frame` for the pairing and the module doc for the bootstrap; ``n_seeds`` counts seed pairs.
    """
    d = paired_frame(treatment, baseline, value, seed_col=seed_col, image_col=image_col, correct_col=correct_col,
                     pairing=pairing)
    return hierarchical_bootstrap(d, "diff", rng=rng, n_boot=n_boot, image_draws=image_draws, level=level)


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries stay NaN and do not count towards m)."""
    p = np.asarray(p_values, float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


# ----------------------------------------------------------------------------------------------- correlations

def _residual_ranks(v: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    r = _st.rankdata(v)
    if z is None:
        return r - r.mean()
    Z = np.column_stack([np.ones(len(v))] + [_st.rankdata(c) for c in z.T])
    beta, *_ = np.linalg.lstsq(Z, r, rcond=None)
    return r - Z @ beta


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return float("nan")
    return float(a @ b / (na * nb))


def partial_spearman(x, y, z=None, *, rng: np.random.Generator, n_boot: int = 2000, n_perm: int = 5000,
                     level: float = 0.95) -> BootResult:
    """Spearman correlation of ``x`` and ``y`` controlling for covariate(s) ``z`` (None: plain Spearman).

    The ranks of x and y are regressed (least squares, with intercept) on the ranks of each covariate; the
    estimate is the Pearson correlation of the residuals. Interval: bootstrap over units (rows). p-value:
    permutation of the x residuals against the y residuals (``n_perm`` shuffles), two-sided, +1 corrected.
    ``n_images`` of the result holds the number of units, ``n_seeds`` 0.
    """
    rng = _check_rng(rng)
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:                      # no units at all (e.g. no model with a correctly classified image)
        nan = float("nan")
        return BootResult(nan, nan, nan, nan, 0, 0)
    zz = None if z is None else np.asarray(z, float).reshape(len(x), -1)
    ok = np.isfinite(x) & np.isfinite(y) & (np.ones(len(x), bool) if zz is None else np.isfinite(zz).all(1))
    x, y = x[ok], y[ok]
    zz = None if zz is None else zz[ok]
    n = len(x)
    k = 0 if zz is None else zz.shape[1]
    if n < k + 3:
        nan = float("nan")
        return BootResult(nan, nan, nan, nan, n, 0)
    rx, ry = _residual_ranks(x, zz), _residual_ranks(y, zz)
    est = _corr(rx, ry)
    perm = np.array([_corr(rng.permutation(rx), ry) for _ in range(n_perm)])
    p = float((np.sum(np.abs(perm) >= abs(est) - 1e-12) + 1) / (n_perm + 1))
    boot = np.empty(n_boot)
    for b in range(n_boot):
        i = rng.integers(0, n, n)
        boot[b] = _corr(_residual_ranks(x[i], None if zz is None else zz[i]),
                        _residual_ranks(y[i], None if zz is None else zz[i]))
    lo, hi = percentile_ci(boot, level)
    return BootResult(est, lo, hi, p, n, 0)


def within_spearman(frame: pd.DataFrame, x: str, y: str, *, rng: np.random.Generator, n_boot: int = 1000,
                    n_perm: int = 1000, seed_col: str = "seed", image_col: str = "image",
                    level: float = 0.95) -> BootResult:
    """Per-image Spearman correlation of ``x`` and ``y`` within each seed (model), averaged over seeds.

    Interval: hierarchical bootstrap (seeds, then one shared image resample). p-value: permutation of ``y``
    across images within every seed (the null "no within-model association"), two-sided, +1 corrected.
    """
    rng = _check_rng(rng)
    V, _, _ = seed_image_matrix(frame.dropna(subset=[x, y]), [x, y], seed_col=seed_col, image_col=image_col)
    n_images, n_seeds = _counts(V)
    per_seed = [(V[0, s][np.isfinite(V[0, s])], V[1, s][np.isfinite(V[1, s])]) for s in range(V.shape[1])]

    def stat(pairs):
        vals = [_corr(_residual_ranks(a, None), _residual_ranks(b, None)) for a, b in pairs if len(a) >= 3]
        return float(_nanmean(np.array(vals), 0)) if vals else float("nan")

    est = stat(per_seed)
    if not np.isfinite(est):
        nan = float("nan")
        return BootResult(nan, nan, nan, nan, n_images, n_seeds)
    perm = np.array([stat([(a, rng.permutation(b)) for a, b in per_seed]) for _ in range(n_perm)])
    p = float((np.sum(np.abs(perm) >= abs(est) - 1e-12) + 1) / (n_perm + 1))
    S, I = V.shape[1], V.shape[2]
    boot = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.integers(0, S, S) if S > 1 else np.zeros(1, int)
        imgs = rng.integers(0, I, I)
        pairs = []
        for s in seeds:
            a, c = V[0, s, imgs], V[1, s, imgs]
            ok = np.isfinite(a) & np.isfinite(c)
            pairs.append((a[ok], c[ok]))
        boot[b] = stat(pairs)
    lo, hi = percentile_ci(boot, level)
    return BootResult(est, lo, hi, p, n_images, n_seeds)


# ----------------------------------------------------------------------------------------------- transfer (RQ3)

def _transfer_matrix(frame: pd.DataFrame, value: str, *, higher_is_robust: bool, seed_col: str, image_col: str,
                     attacked_col: str, evaluated_col: str, correct_col: str | None, images=None):
    """(2, S, I) damage on the diagonal (attacked == evaluated) and off it, per seed and image."""
    f = frame
    if correct_col is not None and correct_col in f.columns:
        f = f[f[correct_col].astype(bool)]
    f = f.dropna(subset=[value])
    if f.empty:
        raise ValueError(f"no attacked rows with a {value!r} value to compute transfer from")
    damage = (1.0 - f[value]) if higher_is_robust else f[value]
    diag = f[attacked_col].astype(str) == f[evaluated_col].astype(str)
    f = f.assign(_diag=damage.where(diag), _off=damage.where(~diag))
    if not diag.any() or diag.all():
        raise ValueError("transfer needs rows on the diagonal (attacked_method == evaluated_method) and off it")
    return seed_image_matrix(f, ["_diag", "_off"], seed_col=seed_col, image_col=image_col, images=images)


def _ratio_boot(V, seeds, counts) -> np.ndarray:
    m = _nanmean(_slot_means(V, seeds, counts), 1)         # (B, 2): diag damage, off damage
    with np.errstate(invalid="ignore", divide="ignore"):
        return m[:, 1] / m[:, 0]


def relative_transfer(frame: pd.DataFrame, value: str = "topk", *, rng: np.random.Generator, n_boot: int = 2000,
                      higher_is_robust: bool = True, seed_col: str = "seed", image_col: str = "image",
                      attacked_col: str = "attacked_method", evaluated_col: str = "evaluated_method",
                      correct_col: str | None = "attacked", image_draws: str = "shared", level: float = 0.95
                      ) -> BootResult:
    """Relative transfer of one model: ``(1 - off) / (1 - diag)`` with a bootstrap interval.

    ``diag`` is the mean metric where the attacked method is the evaluated one, ``off`` the mean over the other
    (attacked, evaluated) pairs, each averaged over images and then seeds; for a metric where lower is more
    robust (mass-centre, cosine) pass ``higher_is_robust=False`` and the damages are the metric itself. The
    ratio is the share of the direct attack's damage that a transferred attack achieves: 1 = transfers fully,
    0 = does not transfer. A ratio of means (not a mean of per-image ratios, which are unstable near diag = 1).
    The p-value tests ratio = 1 (complete transfer).
    """
    rng = _check_rng(rng)
    V, _, _ = _transfer_matrix(frame, value, higher_is_robust=higher_is_robust, seed_col=seed_col,
                               image_col=image_col, attacked_col=attacked_col, evaluated_col=evaluated_col,
                               correct_col=correct_col)
    obs = _nanmean(_observed_means(V), 0)
    est = float(obs[1] / obs[0]) if obs[0] != 0 else float("nan")
    seeds, counts = _draw(rng, n_boot, V.shape[1], V.shape[2], image_draws)
    boot = _ratio_boot(V, seeds, counts)
    lo, hi = percentile_ci(boot, level)
    n_images, n_seeds = _counts(V)
    return BootResult(est, lo, hi, bootstrap_p(boot, 1.0), n_images, n_seeds)


def relative_transfer_difference(first: pd.DataFrame, second: pd.DataFrame, value: str = "topk", *,
                                 rng: np.random.Generator, n_boot: int = 2000, higher_is_robust: bool = True,
                                 seed_col: str = "seed", image_col: str = "image",
                                 attacked_col: str = "attacked_method", evaluated_col: str = "evaluated_method",
                                 correct_col: str | None = "attacked", level: float = 0.95) -> BootResult:
    """``relative_transfer(first) - relative_transfer(second)`` on shared images, with a joint bootstrap.

    Each replicate draws one image resample (over the union of both models' images, shared by both) and each
    model's seeds independently. ``n_seeds`` is the smaller seed count, ``n_images`` the union of images.
    """
    rng = _check_rng(rng)
    kw = dict(higher_is_robust=higher_is_robust, seed_col=seed_col, image_col=image_col,
              attacked_col=attacked_col, evaluated_col=evaluated_col, correct_col=correct_col)
    imgs = sorted(set(first[image_col]).union(second[image_col]))
    Va, _, _ = _transfer_matrix(first, value, images=imgs, **kw)
    Vb, _, _ = _transfer_matrix(second, value, images=imgs, **kw)
    oa, ob = _nanmean(_observed_means(Va), 0), _nanmean(_observed_means(Vb), 0)
    est = float(oa[1] / oa[0] - ob[1] / ob[0])
    sa, counts = _draw(rng, n_boot, Va.shape[1], len(imgs), "shared")
    sb = rng.integers(0, Vb.shape[1], size=(n_boot, Vb.shape[1])) if Vb.shape[1] > 1 else np.zeros((n_boot, 1), int)
    boot = _ratio_boot(Va, sa, counts) - _ratio_boot(Vb, sb, counts)
    lo, hi = percentile_ci(boot, level)
    (ia, na), (ib, nb) = _counts(Va), _counts(Vb)
    n_images = int((np.isfinite(Va).any((0, 1)) | np.isfinite(Vb).any((0, 1))).sum())
    return BootResult(est, lo, hi, bootstrap_p(boot, 0.0), n_images, min(na, nb))


# ----------------------------------------------------------------------------------------------- frontiers

def _point_draws(points: pd.DataFrame, col: str, rng, n_boot: int, level: float) -> np.ndarray:
    """(B, n) normal draws per point from its estimate and interval (sd = width / (2 z)); exact without one."""
    est = points[col].to_numpy(float)
    lo_c, hi_c = f"{col}_low", f"{col}_high"
    if lo_c not in points.columns or hi_c not in points.columns:
        return np.broadcast_to(est, (n_boot, len(est))).copy()
    z = _st.norm.ppf(0.5 + level / 2)
    sd = np.nan_to_num((points[hi_c].to_numpy(float) - points[lo_c].to_numpy(float)) / (2 * z))
    return est + rng.standard_normal((n_boot, len(est))) * np.maximum(sd, 0)


def _interp(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> np.ndarray:
    order = np.argsort(xs, kind="stable")
    return np.interp(grid, xs[order], ys[order])


def frontier_difference(points: pd.DataFrame, family_a: str, family_b: str, *, rng: np.random.Generator,
                        x: str = "accuracy", y: str = "robustness", family_col: str = "family",
                        n_grid: int = 21, grid=None, log_x: bool = False, n_boot: int = 2000,
                        level: float = 0.95) -> tuple[BootResult, pd.DataFrame]:
    """Compare two families' trade-off curves ``y(x)`` at matched ``x``, using *every* point of each family.

    Each family's curve is the piecewise-linear interpolation of all its points sorted by ``x`` (not the upper
    envelope, and never a chosen best point: all strengths count). The curves are compared on a common grid
    of ``n_grid`` values spanning the overlap of the families' ``x`` ranges (or the given ``grid``); the effect
    is the mean over the grid of ``y_a - y_b`` (the signed area between the curves over the overlap, divided by
    its width). Uncertainty: each replicate draws every point's ``x`` and ``y`` from a normal with the point's
    estimate and the sd implied by its interval columns ``<x>_low/_high`` and ``<y>_low/_high`` (absent: no
    noise), an approximation that treats points as independent (they are: separate trainings).

    Args:
        points: one row per (family, strength) with columns ``family_col``, ``x``, ``y`` and optional intervals.
        family_a, family_b: the families compared (effect = a - b).
        x: "accuracy" for matched clean accuracy, a cost column (seconds, batches) for matched training cost
            (then ``log_x=True`` interpolates in log cost).
    Returns:
        (:class:`BootResult` of the grid-mean difference, with ``n_images`` = number of points used and
        ``n_seeds`` = 0; a frame with one row per grid value: x, y_a, y_b, diff, ci_low, ci_high).
    Raises:
        ValueError: a family has fewer than two distinct ``x`` values, or the ranges do not overlap.
    """
    rng = _check_rng(rng)
    fam = {}
    for name in (family_a, family_b):
        p = points[points[family_col] == name].dropna(subset=[x, y])
        if p[x].nunique() < 2:
            raise ValueError(f"family {name!r} has {p[x].nunique()} distinct {x} value(s); a curve needs at least "
                             f"two points (train more strengths)")
        fam[name] = p
    tx = (lambda v: np.log(v)) if log_x else (lambda v: v)
    if grid is None:
        lo = max(fam[n][x].min() for n in fam)
        hi = min(fam[n][x].max() for n in fam)
        if not lo < hi:
            raise ValueError(f"the {x} ranges of {family_a!r} and {family_b!r} do not overlap; no matched comparison "
                             f"is possible (widen the strength sweeps)")
        grid = np.exp(np.linspace(np.log(lo), np.log(hi), n_grid)) if log_x else np.linspace(lo, hi, n_grid)
    grid = np.asarray(grid, float)
    curves, boots = {}, {}
    for name, p in fam.items():
        curves[name] = _interp(tx(p[x].to_numpy(float)), p[y].to_numpy(float), tx(grid))
        xd = _point_draws(p, x, rng, n_boot, level)
        yd = _point_draws(p, y, rng, n_boot, level)
        if log_x:
            xd = np.log(np.clip(xd, 1e-300, None))
        boots[name] = np.stack([_interp(xd[b], yd[b], tx(grid)) for b in range(n_boot)])
    diff = curves[family_a] - curves[family_b]
    bdiff = boots[family_a] - boots[family_b]                      # (B, G)
    q = (1 - level) / 2
    table = pd.DataFrame({x: grid, f"{y}_{family_a}": curves[family_a], f"{y}_{family_b}": curves[family_b],
                          "diff": diff, "ci_low": np.quantile(bdiff, q, axis=0),
                          "ci_high": np.quantile(bdiff, 1 - q, axis=0)})
    bmean = bdiff.mean(1)
    lo, hi = percentile_ci(bmean, level)
    n_points = sum(len(p) for p in fam.values())
    return BootResult(float(diff.mean()), lo, hi, bootstrap_p(bmean), n_points, 0), table


def matched_accuracy(points: pd.DataFrame, family_a: str, family_b: str, *, rng: np.random.Generator,
                     accuracy: str = "accuracy", robustness: str = "robustness", **kwargs):
    """Robustness of family a minus family b at matched clean accuracy (:func:`frontier_difference`)."""
    return frontier_difference(points, family_a, family_b, rng=rng, x=accuracy, y=robustness, **kwargs)


def matched_cost(points: pd.DataFrame, family_a: str, family_b: str, *, rng: np.random.Generator,
                 cost: str = "cost", robustness: str = "robustness", **kwargs):
    """Robustness of family a minus family b at matched training cost (log-cost interpolation)."""
    kwargs.setdefault("log_x", True)
    return frontier_difference(points, family_a, family_b, rng=rng, x=cost, y=robustness, **kwargs)


# ----------------------------------------------------------------------------------------------- bound test (RQ2)

def bound_summary(frame: pd.DataFrame, *, rng: np.random.Generator, predicted: str = "predicted_grad_change",
                  realised: str = "grad_change", within: str = "within_bound", n_boot: int = 1000,
                  n_perm: int = 1000, seed_col: str = "seed", image_col: str = "image") -> dict[str, BootResult]:
    """Summarise :func:`smoothgeo.core.lipschitz.bound_test` rows (one per attacked image, seeds as ``seed_col``).

    Returns ``{"coverage": share of images whose realised change is within L * ||delta|| (hierarchical
    bootstrap interval; its p-value tests coverage = 0 and is not meaningful), "rank": within-model Spearman of
    predicted vs realised change (does a larger L * ||delta|| go with a larger realised change?)}``.
    """
    rng = _check_rng(rng)
    return {"coverage": hierarchical_bootstrap(frame, within, rng=rng, n_boot=n_boot, seed_col=seed_col,
                                               image_col=image_col),
            "rank": within_spearman(frame, predicted, realised, rng=rng, n_boot=n_boot, n_perm=n_perm,
                                    seed_col=seed_col, image_col=image_col)}
