"""The O(P log P) Kendall tau-b against scipy (bit-for-bit), ties included, and against the O(P^2) route."""
import itertools

import numpy as np
import pytest
import scipy.stats as st
import torch

from smoothgeo.core.metrics import kendall_tau
from smoothgeo.core.ranks import discordant_pairs, kendall_tau_b, tied_pairs


def _maps(shape, levels=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=dtype)
    b = a + 0.7 * torch.rand(shape, generator=g, dtype=dtype) - 0.3   # correlated, either sign of tau per row
    if levels:
        a, b = (a * levels).floor(), (b * levels).floor()
    return a, b


def _scipy(a, b):
    return np.array([st.kendalltau(a[i].ravel().numpy(), b[i].ravel().numpy()).statistic for i in range(len(a))])


@pytest.mark.parametrize("shape,levels", [((12, 7, 9), None), ((12, 7, 9), 3), ((12, 33, 31), 2),
                                          ((8, 2), None), ((8, 3), 2), ((6, 40, 40), 50), ((4, 1000), None)])
def test_equals_scipy_bit_for_bit(shape, levels):
    a, b = _maps(shape, levels, seed=sum(shape))
    assert np.array_equal(kendall_tau_b(a, b).numpy(), _scipy(a, b), equal_nan=True)


def test_float64_and_anticorrelated():
    a, b = _maps((5, 17, 13), seed=3, dtype=torch.float64)
    assert np.array_equal(kendall_tau_b(a, -b).numpy(), _scipy(a, -b))
    assert (kendall_tau_b(a, a) == 1).all() and (kendall_tau_b(a, -a) == -1).all()


def test_constant_and_nan_rows_are_nan():
    a, b = _maps((4, 6, 6), seed=1)
    a[1] = 0.5          # constant x
    b[2] = 0.0          # constant y
    a[3, 0, 0] = float("nan")
    tau = kendall_tau_b(a, b)
    assert torch.isnan(tau[1:]).all() and not torch.isnan(tau[0])
    with np.errstate(all="ignore"):
        for i in (1, 2):
            assert np.isnan(st.kendalltau(a[i].ravel().numpy(), b[i].ravel().numpy()).statistic)


def test_counts_against_brute_force():
    g = torch.Generator().manual_seed(5)
    r = torch.randint(0, 6, (3, 23), generator=g)
    dis, ties = discordant_pairs(r), tied_pairs(r.float())
    for i in range(3):
        pairs = list(itertools.combinations(r[i].tolist(), 2))
        assert dis[i] == sum(u > v for u, v in pairs)
        assert ties[i] == sum(u == v for u, v in pairs)


def test_matches_quadratic_route():
    for levels in (None, 4):
        a, b = _maps((5, 20, 20), levels, seed=7, dtype=torch.float64)
        quadratic = kendall_tau(a, b, route="quadratic", max_elements=5 * 400 * 9)   # 45 blocks of 9 rows
        assert torch.allclose(kendall_tau_b(a, b), quadratic, atol=1e-12, rtol=0)
        assert np.allclose(quadratic.numpy(), _scipy(a, b), atol=1e-12, rtol=0)


def test_shape_checks():
    with pytest.raises(ValueError, match="same shape"):
        kendall_tau_b(torch.rand(2, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="batched"):
        kendall_tau_b(torch.rand(3), torch.rand(3))
