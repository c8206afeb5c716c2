"""Kendall's tau-b on large maps: the O(P log P) route vs scipy vs the exact O(P^2) ``metrics.kendall_tau``.

Prints the seconds for ``--maps`` pairs of ``--size`` x ``--size`` maps on the CPU for
:func:`smoothgeo.core.ranks.kendall_tau_b` (batched), ``scipy.stats.kendalltau`` (a loop over maps) and the current
:func:`smoothgeo.core.metrics.kendall_tau` (timed on ``--quadratic-maps`` maps and extrapolated linearly in the
number of maps, which is exact for its cost), and the largest absolute difference of each to scipy.
Maps are correlated uniform noise; ``--levels L`` quantises them to L values (heavy ties).

    python benchmarks/kendall.py --maps 100 --size 224 [--levels 16] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.stats as st
import torch

from smoothgeo.core.metrics import kendall_tau
from smoothgeo.core.ranks import kendall_tau_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--levels", type=int, default=None, help="quantise the maps to this many values (ties)")
    parser.add_argument("--quadratic-maps", type=int, default=1, help="maps timed on the O(P^2) route (0: skip)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    shape = (args.maps, args.size, args.size)
    a = torch.rand(shape, generator=g)
    b = a + 0.5 * torch.rand(shape, generator=g)
    if args.levels:
        a, b = (a * args.levels).floor(), (b * args.levels).floor()
    p = args.size ** 2
    ties = f"{args.levels} levels" if args.levels else "no ties"
    print(f"{args.maps} maps of {args.size}x{args.size} (P = {p}), {ties}, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    fast = kendall_tau_b(a, b).numpy()
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = np.array([st.kendalltau(a[i].ravel().numpy(), b[i].ravel().numpy()).statistic for i in range(args.maps)])
    t_scipy = time.perf_counter() - t0
    print(f"ranks.kendall_tau_b  {t_fast:9.2f} s  max |diff| to scipy {np.nanmax(np.abs(fast - ref)):.3g}, "
          f"bit-identical {np.array_equal(fast, ref, equal_nan=True)}")
    print(f"scipy.stats.kendalltau {t_scipy:7.2f} s")
    if args.quadratic_maps:
        m = min(args.quadratic_maps, args.maps)
        t0 = time.perf_counter()
        quad = kendall_tau(a[:m], b[:m]).double().numpy()
        t_quad = time.perf_counter() - t0
        print(f"metrics.kendall_tau (O(P^2)) {t_quad:.2f} s on {m} map(s) -> {t_quad * args.maps / m:.0f} s for "
              f"{args.maps} (extrapolated); max |diff| to scipy {np.nanmax(np.abs(quad - ref[:m])):.3g} "
              f"(float32 output)")


if __name__ == "__main__":
    main()
