"""Exact Kendall tau-b in O(P log P) per map, batched in torch (Knight 1966, with tie corrections).

:func:`kendall_tau_b` equals ``scipy.stats.kendalltau(x, y).statistic`` (variant ``"b"``, the default) for every
row, ties included, to the last bit: the same integer counts and the same floating-point expression
``(tot - xtie - ytie + ntie - 2 dis) / sqrt(tot - xtie) / sqrt(tot - ytie)``, clipped to [-1, 1]. A row in which
either map is constant (every pair tied) gives NaN, as scipy does; so does a row that contains a NaN.

Algorithm (Knight's): sort each row by x, then y (one sort of the joint dense rank ``rx * P + ry``); the
discordant pairs are then the strict inversions of the y ranks in that order. They are counted with a radix
(wavelet) pass over the bits of the y rank, most significant first: at each bit, within every group of equal
higher bits (kept contiguous and in position order by a stable partition), a pair is discordant exactly when the
earlier element has the bit set and the later one does not. Each of the ``ceil(log2 P)`` passes is a handful of
vectorised O(N P) operations (cumsum, gather, scatter), so the whole batch costs O(N P log P) on any device, with
no Python loop over images or pixels. Tie counts come from the sorted dense ranks: the pairs tied in x are
``sum_groups t (t - 1) / 2`` over the runs of equal values (likewise for y and for the joint (x, y) ties).

Counts are int64 (P up to about 4e9 pixels); the result is float64.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["kendall_tau_b", "discordant_pairs", "tied_pairs"]


def _sorted_runs(v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row-wise sort of ``v``: (sorted values, order, run start flags) with runs of equal values."""
    s, order = v.sort(dim=1, stable=True)
    start = torch.ones_like(s, dtype=torch.bool)
    start[:, 1:] = s[:, 1:] != s[:, :-1]
    return s, order, start


def _tied_from_starts(start: Tensor) -> Tensor:
    """Pairs tied within runs, per row: sum over sorted elements of their offset in their run = sum t(t-1)/2."""
    n, p = start.shape
    idx = torch.arange(p, device=start.device).expand(n, p)
    run_start = torch.where(start, idx, torch.zeros_like(idx)).cummax(1).values
    return (idx - run_start).sum(1)


def tied_pairs(v: Tensor) -> Tensor:
    """(N,) int64: pairs of pixels with equal values in each row of ``v`` (N, P)."""
    return _tied_from_starts(_sorted_runs(v)[2])


def _dense_rank(v: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise dense ranks 0.. of ``v`` (ties share a rank) and the tied pairs of each row."""
    _, order, start = _sorted_runs(v)
    ranks_sorted = start.long().cumsum(1) - 1
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted), _tied_from_starts(start)


def discordant_pairs(r: Tensor) -> Tensor:
    """(N,) int64: strict inversions ``#{j < i : r[j] > r[i]}`` of each row of integers ``r`` (N, P).

    Ties are first broken by position (a stable argsort), which adds no inversion and turns each row into a
    permutation of 0..P-1; then one radix pass per bit (see the module docstring), O(N P log P) in all.
    """
    n, p = r.shape
    dev = r.device
    if p < 2:
        return torch.zeros(n, dtype=torch.long, device=dev)
    idx = torch.arange(p, device=dev, dtype=torch.int32).expand(n, p)
    order = r.argsort(dim=1, stable=True)
    v = torch.empty((n, p), dtype=torch.int32, device=dev).scatter_(1, order, idx)   # permutation per row
    total = torch.zeros(n, dtype=torch.long, device=dev)
    for b in range(max(1, (p - 1).bit_length()) - 1, -1, -1):
        # each row of v is sorted by v >> (b + 1), in position order within equal prefixes; as v is a
        # permutation, the group of prefix q starts at q << (b + 1) and holds min(2^b, P - start) clear bits
        start = (v >> (b + 1)) << (b + 1)
        bit = (v >> b) & 1
        ones_excl = bit.cumsum(1, dtype=torch.int32) - bit
        ones_before = ones_excl - ones_excl.gather(1, start.long())     # set bits earlier in the same group
        total += (ones_before * (1 - bit)).sum(1, dtype=torch.long)
        zeros_in_group = (p - start).clamp(max=1 << b)
        offset = idx - start
        newpos = start + torch.where(bit == 0, offset - ones_before, zeros_in_group + ones_before)
        v = torch.empty_like(v).scatter_(1, newpos.long(), v)
    return total


def kendall_tau_b(x: Tensor, y: Tensor) -> Tensor:
    """Kendall's tau-b between the rows of ``x`` and ``y`` (N, ...) flattened per row; (N,) float64.

    Equal to ``scipy.stats.kendalltau(x[i].ravel(), y[i].ravel()).statistic`` for every i (NaN where a row of
    either map is constant or holds a NaN). Runs on the inputs' device.
    """
    if x.shape != y.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() < 2:
        raise ValueError(f"maps must be batched (N, ...), got shape {tuple(x.shape)}")
    a, b = x.flatten(1), y.flatten(1)
    n, p = a.shape
    bad = a.isnan().any(1) | b.isnan().any(1) if a.is_floating_point() else torch.zeros(n, dtype=torch.bool,
                                                                                          device=a.device)
    rx, xtie = _dense_rank(a)
    ry, ytie = _dense_rank(b)
    joint = rx * p + ry                                       # lexicographic (x, y) key, exact in int64
    _, order, start = _sorted_runs(joint)
    ntie = _tied_from_starts(start)
    dis = discordant_pairs(ry.gather(1, order))
    tot = p * (p - 1) // 2
    con_minus_dis = (tot - xtie - ytie + ntie - 2 * dis).cpu().numpy()
    # the final expression in numpy, as scipy writes it: torch's float64 sqrt is not always correctly rounded
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = con_minus_dis / np.sqrt((tot - xtie).cpu().numpy()) / np.sqrt((tot - ytie).cpu().numpy())
    tau = torch.from_numpy(np.clip(tau, -1.0, 1.0)).to(a.device)
    nan = (xtie == tot) | (ytie == tot) | bad
    return torch.where(nan, torch.full_like(tau, float("nan")), tau)
