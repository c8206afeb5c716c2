"""Dissimilarity between clean and attacked attribution maps, batched in torch.

Every metric takes two (N, H, W) maps (any trailing shape works: maps are flattened per image) and returns an
(N,) tensor on their device. Rank correlations treat ties as scipy does: Kendall's tau-b
(``scipy.stats.kendalltau``'s default) and Spearman's rho on average ranks (``scipy.stats.spearmanr``).

Degenerate pairs: where either map is constant (an all-zero map included, e.g. the gradient x input map of a
black image) or holds a non-finite value, there is no ranking, no top-k set and no centre of mass to compare,
so every metric is NaN for that image (never a number that looks real: two identical all-zero maps would
otherwise get top-k 0.12 from arbitrary tie-breaking, a dislocation of many pixels and cosine distance 1). Each
call that meets such pairs issues a :class:`DegenerateMapWarning` with their count; downstream summaries must
count NaN rows rather than average them away.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

__all__ = ["topk_intersection", "kendall_tau", "spearman_rho", "mass_center", "mass_center_dislocation",
           "cosine_distance", "rank_average", "degenerate_pairs", "DegenerateMapWarning", "METRICS", "lens_recall",
           "gini_sparseness", "LENS_WINDOW"]

#: the neighbourhood of :func:`lens_recall`: a 3 x 3 window (Kamath et al.'s 3-LENS)
LENS_WINDOW = 3


class DegenerateMapWarning(UserWarning):
    """Some map pairs were constant (e.g. all zero) or non-finite; their metric is NaN."""


def _as_float(m: Tensor) -> Tensor:
    """``m`` itself when floating point, else (integer or bool maps) as float64, so that no metric is computed in
    (or cast back to) an integer dtype; complex maps are refused."""
    if not isinstance(m, Tensor):
        raise ValueError(f"maps must be tensors, got {type(m).__name__}")
    if m.is_complex():
        raise ValueError(f"maps must be real, got dtype {m.dtype}")
    return m if m.is_floating_point() else m.double()


def _pair(m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    if m1.shape != m2.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(m1.shape)} and {tuple(m2.shape)}")
    if m1.dim() < 2:
        raise ValueError(f"maps must be batched (N, H, W), got shape {tuple(m1.shape)}")
    if math.prod(m1.shape[1:]) == 0:
        raise ValueError(f"maps must have at least one pixel, got shape {tuple(m1.shape)}")
    return m1.flatten(1), m2.flatten(1)


def degenerate_pairs(m1: Tensor, m2: Tensor) -> Tensor:
    """(N,) bool: either map of the pair is constant (all zero included) or holds a NaN/inf."""
    a, b = _pair(_as_float(m1), _as_float(m2))
    bad = torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
    for t in (a, b):
        bad |= ~torch.isfinite(t).all(1) | (t.amax(1) == t.amin(1))
    return bad


def _nan_where_degenerate(value: Tensor, m1: Tensor, m2: Tensor, metric: str) -> Tensor:
    bad = degenerate_pairs(m1, m2)
    n_bad = int(bad.sum())
    if n_bad:
        warnings.warn(f"{metric}: {n_bad} of {bad.numel()} map pairs have a constant (e.g. all-zero) or non-finite "
                      f"map; their {metric} is NaN", DegenerateMapWarning, stacklevel=3)
        value = value.masked_fill(bad, float("nan"))
    return value


def topk_intersection(m1: Tensor, m2: Tensor, k: int) -> Tensor:
    """Fraction of the k largest entries of ``m1`` that are also among the k largest of ``m2``; (N,)."""
    m1, m2 = _as_float(m1), _as_float(m2)
    a, b = _pair(m1, m2)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must be in [1, {a.shape[1]}] (the number of pixels in a map), got {k}")
    mask = torch.zeros_like(a, dtype=torch.bool)
    mask.scatter_(1, a.topk(k, dim=1).indices, True)
    hits = mask.gather(1, b.topk(k, dim=1).indices)
    return _nan_where_degenerate(hits.float().sum(1) / k, m1, m2, "top-k intersection")


def lens_recall(m1: Tensor, m2: Tensor, k: int, window: int = LENS_WINDOW) -> Tensor:
    """w-LENS-recall@k (Kamath et al. 2024, "Rethinking Robustness of Model Attributions", arXiv 2312.10534).

    The locality-sensitive top-k: the fraction of the k largest pixels of ``m1`` (the clean map) that have at
    least one of the k largest pixels of ``m2`` inside the ``window x window`` square centred on them. With
    ``window = 1`` it is :func:`topk_intersection`; a top-k set shifted by one pixel scores 1 at ``window = 3``
    where plain top-k may score 0. (The paper's name for it is w-LENS-recall@k; its "LENS-top-k" rows use it.)
    Maps must be (N, H, W).
    """
    m1, m2 = _as_float(m1), _as_float(m2)
    if m1.dim() != 3 or m1.shape != m2.shape:
        raise ValueError(f"lens_recall needs two (N, H, W) maps of one shape, got {tuple(m1.shape)} and "
                         f"{tuple(m2.shape)}")
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1 (the side of the square), got {window}")
    a, b = _pair(m1, m2)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must be in [1, {a.shape[1]}] (the number of pixels in a map), got {k}")
    n, h, w = m1.shape
    top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
    top_b = torch.zeros_like(b).scatter_(1, b.topk(k, dim=1).indices, 1.0).view(n, 1, h, w)
    near_b = torch.nn.functional.max_pool2d(top_b, window, stride=1, padding=window // 2).reshape(n, h * w) > 0
    return _nan_where_degenerate((top_a & near_b).float().sum(1) / k, m1, m2, "LENS recall")


def gini_sparseness(m: Tensor) -> Tensor:
    """Gini index of ``|m|`` per map (Chalasani et al. 2020; Quantus' Sparseness): 0 = uniform, -> 1 = one pixel.

    ``G = sum_i (2i - P - 1) a_(i) / (P sum_i a_(i))`` over the P sorted magnitudes ``a_(1) <= ... <= a_(P)``;
    NaN for an all-zero map. (N,).
    """
    a = _as_float(m).flatten(1).abs().double().sort(dim=1).values
    p = a.shape[1]
    i = torch.arange(1, p + 1, device=a.device, dtype=a.dtype)
    total = a.sum(1)
    g = ((2 * i - p - 1) * a).sum(1) / (p * total.clamp_min(1e-300))
    return torch.where(total > 0, g, torch.full_like(g, float("nan"))).to(m.dtype if m.is_floating_point()
                                                                         else torch.float64)


def rank_average(v: Tensor) -> Tensor:
    """Row-wise ranks 1..P with ties given their average rank (``scipy.stats.rankdata(method='average')``)."""
    if not isinstance(v, Tensor) or v.dim() != 2 or v.is_complex():
        raise ValueError(f"rank_average expects a real (N, P) tensor, got {type(v).__name__} of shape "
                         f"{tuple(getattr(v, 'shape', ()))}")
    n, p = v.shape
    sorted_v, order = v.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_v, dtype=torch.bool)
    new_group[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = new_group.long().cumsum(1) - 1 + torch.arange(n, device=v.device).view(-1, 1) * p
    positions = torch.arange(1, p + 1, device=v.device, dtype=torch.float64).expand(n, p)
    sums = torch.zeros(n * p, device=v.device, dtype=torch.float64).index_add_(0, group.flatten(), positions.flatten())
    counts = torch.zeros(n * p, device=v.device, dtype=torch.float64).index_add_(
        0, group.flatten(), torch.ones(n * p, device=v.device, dtype=torch.float64))
    avg = (sums / counts.clamp_min(1))[group]
    ranks = torch.empty_like(avg)
    ranks.scatter_(1, order, avg)
    return ranks


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    return (a * b).sum(1) / den  # nan where a map is constant, as scipy


def spearman_rho(m1: Tensor, m2: Tensor) -> Tensor:
    """Spearman's rank correlation over all pixels, average ranks for ties; (N,) float64 -> input dtype."""
    m1, m2 = _as_float(m1), _as_float(m2)
    a, b = _pair(m1, m2)
    rho = _pearson(rank_average(a.double()), rank_average(b.double())).to(m1.dtype)
    return _nan_where_degenerate(rho, m1, m2, "Spearman rho")


def kendall_tau(m1: Tensor, m2: Tensor, *, max_elements: int = 2 ** 24, route: str = "auto") -> Tensor:
    """Kendall's tau-b over all pixels (scipy's default), exact.

    ``tau_b = (C - D) / sqrt((n0 - t1) (n0 - t2))`` with n0 = P(P-1)/2 and t1, t2 the tied pairs of each map.
    Two exact routes: ``"fast"``, O(P log P) (Knight's algorithm, :func:`smoothgeo.core.ranks.kendall_tau_b`, equal to
    scipy ties included), used automatically for maps of more than 64 pixels; ``"quadratic"``, O(P^2) in row
    blocks of ``max_elements // (N * P)`` pixels compared with all others (bounded temporary memory).
    ``max_elements`` only sizes the quadratic route's blocks: ``route="auto"`` picks by the map size alone, and
    ``route="quadratic"`` forces the O(P^2) route at any size (the tests compare the two routes that way).
    """
    if route not in ("auto", "fast", "quadratic"):
        raise ValueError(f"route must be 'auto', 'fast' or 'quadratic', got {route!r}")
    m1, m2 = _as_float(m1), _as_float(m2)
    a, b = _pair(m1, m2)
    n, p = a.shape
    if n == 0:  # an empty batch: no pairs to compare
        return a.new_empty((0,), dtype=m1.dtype)
    if route == "fast" or (route == "auto" and p > 64):
        from smoothgeo.core.ranks import kendall_tau_b

        return _nan_where_degenerate(kendall_tau_b(a, b).to(m1.dtype), m1, m2, "Kendall tau")
    block = max(1, max_elements // (n * p))
    s = torch.zeros(n, dtype=torch.float64, device=a.device)    # sum over pairs of sign(da) * sign(db)
    ta = torch.zeros_like(s)                                    # pairs tied in a
    tb = torch.zeros_like(s)
    for start in range(0, p, block):
        sa = torch.sign(a[:, start:start + block, None] - a[:, None, :])
        sb = torch.sign(b[:, start:start + block, None] - b[:, None, :])
        s += (sa * sb).sum((1, 2), dtype=torch.float64)
        ta += (sa == 0).sum((1, 2), dtype=torch.float64)
        tb += (sb == 0).sum((1, 2), dtype=torch.float64)
    # ordered pairs counted twice; the diagonal (P entries) counted as ties
    n0 = p * (p - 1) / 2
    t1 = (ta - p) / 2
    t2 = (tb - p) / 2
    tau = (s / 2) / torch.sqrt((n0 - t1) * (n0 - t2))
    return _nan_where_degenerate(tau.to(m1.dtype), m1, m2, "Kendall tau")


def mass_center(m: Tensor) -> Tensor:
    """Centre of mass (row, col) of each (N, H, W) map in pixel coordinates; (N, 2)."""
    m = _as_float(m)
    if m.dim() != 3:
        raise ValueError(f"mass_center expects (N, H, W) maps, got shape {tuple(m.shape)}")
    _, h, w = m.shape
    rows = torch.arange(h, device=m.device, dtype=m.dtype).view(1, h, 1)
    cols = torch.arange(w, device=m.device, dtype=m.dtype).view(1, 1, w)
    total = m.sum((1, 2)).clamp_min(torch.finfo(m.dtype).tiny)
    return torch.stack([(m * rows).sum((1, 2)) / total, (m * cols).sum((1, 2)) / total], dim=1)


def mass_center_dislocation(m1: Tensor, m2: Tensor) -> Tensor:
    """Euclidean distance in pixels between the maps' centres of mass; (N,) (NaN for degenerate pairs)."""
    m1, m2 = _as_float(m1), _as_float(m2)
    _pair(m1, m2)
    return _nan_where_degenerate((mass_center(m1) - mass_center(m2)).norm(dim=1), m1, m2, "mass-centre dislocation")


def cosine_distance(m1: Tensor, m2: Tensor, eps: float = 1e-12) -> Tensor:
    """``1 - cos(m1, m2)`` between the flattened maps, in [0, 2]; (N,)."""
    m1, m2 = _as_float(m1), _as_float(m2)
    a, b = _pair(m1, m2)
    # clamped: rounding can give -1e-7 for identical maps
    dist = (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)).clamp(0.0, 2.0)
    return _nan_where_degenerate(dist, m1, m2, "cosine distance")


#: metric name -> (function, needs k). Used by the evaluation engine; ``higher_is_similar`` tells the direction.
METRICS = {
    "topk": topk_intersection,
    "kendall": kendall_tau,
    "spearman": spearman_rho,
    "mass_center": mass_center_dislocation,
    "cosine": cosine_distance,
    "lens_topk": lens_recall,
}
