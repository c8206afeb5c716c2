"""Batched torch metrics against scipy / numpy on random maps, with and without ties."""
import numpy as np
import pytest
import scipy.stats as st
import torch

from smoothgeo.core.metrics import (
    cosine_distance, kendall_tau, mass_center, mass_center_dislocation, rank_average, spearman_rho,
    topk_intersection,
)


def random_maps(n=4, h=9, w=7, ties=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if ties:
        return (torch.randint(0, 4, (n, h, w), generator=g).float(), torch.randint(0, 5, (n, h, w), generator=g).float())
    return torch.rand(n, h, w, generator=g), torch.rand(n, h, w, generator=g)


@pytest.mark.parametrize("ties", [False, True])
def test_rank_correlations_equal_scipy(ties):
    a, b = random_maps(ties=ties)
    tau = kendall_tau(a, b)
    rho = spearman_rho(a, b)
    for i in range(a.shape[0]):
        x, y = a[i].flatten().numpy(), b[i].flatten().numpy()
        assert tau[i].item() == pytest.approx(st.kendalltau(x, y).statistic, abs=1e-6)
        assert rho[i].item() == pytest.approx(st.spearmanr(x, y).statistic, abs=1e-6)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_elements", [3 * 100 * 7, 3 * 100 * 100, 50])   # blocks of 7 rows, one block, 1 row
def test_kendall_quadratic_route_in_blocks_equals_scipy(ties, max_elements):
    """The O(P^2) route, forced, over 100-pixel maps: several blocks (the last one short) give scipy's tau-b."""
    a, b = random_maps(n=3, h=10, w=10, ties=ties, seed=4)
    slow = kendall_tau(a.double(), b.double(), route="quadratic", max_elements=max_elements)
    for i in range(a.shape[0]):
        expected = st.kendalltau(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert slow[i].item() == pytest.approx(expected, abs=1e-12)
    fast = kendall_tau(a.double(), b.double(), route="fast")
    torch.testing.assert_close(slow, fast, atol=1e-12, rtol=0)
    # the default (auto) route on maps over 64 pixels is the fast one, whatever max_elements says
    assert torch.equal(kendall_tau(a, b, max_elements=max_elements), kendall_tau(a, b, route="fast"))


def test_kendall_route_is_checked():
    a, b = random_maps()
    with pytest.raises(ValueError, match="route must be"):
        kendall_tau(a, b, route="slow")


def test_rank_average_equals_scipy_rankdata():
    a, _ = random_maps(ties=True)
    flat = a.flatten(1)
    ranks = rank_average(flat)
    for i in range(flat.shape[0]):
        np.testing.assert_allclose(ranks[i].numpy(), st.rankdata(flat[i].numpy()))


def test_identical_maps_are_perfectly_similar():
    a, _ = random_maps()
    torch.testing.assert_close(topk_intersection(a, a, 10), torch.ones(4))
    torch.testing.assert_close(kendall_tau(a, a), torch.ones(4))
    torch.testing.assert_close(spearman_rho(a, a), torch.ones(4))
    torch.testing.assert_close(mass_center_dislocation(a, a), torch.zeros(4))
    torch.testing.assert_close(cosine_distance(a, a), torch.zeros(4), atol=1e-6, rtol=0)


def test_topk_intersection_equals_set_computation():
    a, b = random_maps(n=5)
    k = 12
    got = topk_intersection(a, b, k)
    for i in range(5):
        sa = set(np.argsort(-a[i].flatten().numpy())[:k])
        sb = set(np.argsort(-b[i].flatten().numpy())[:k])
        assert got[i].item() == pytest.approx(len(sa & sb) / k)
    reverse = -a
    assert topk_intersection(a, reverse, 10).max() == 0


def test_mass_center_of_point_masses():
    m = torch.zeros(2, 6, 8)
    m[0, 1, 2] = 5.0
    m[1, 4, 6] = 1.0
    torch.testing.assert_close(mass_center(m), torch.tensor([[1.0, 2.0], [4.0, 6.0]]))
    d = mass_center_dislocation(m[:1], m[1:])
    torch.testing.assert_close(d, torch.tensor([5.0]))  # (3, 4) -> 5


def test_cosine_distance_of_orthogonal_maps_is_one():
    a = torch.zeros(1, 2, 2)
    b = torch.zeros(1, 2, 2)
    a[0, 0, 0] = 1
    b[0, 1, 1] = 3
    torch.testing.assert_close(cosine_distance(a, b), torch.ones(1))


def test_bad_arguments_raise_clear_errors():
    a, b = random_maps(h=3, w=3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 9\]"):
        topk_intersection(a, b, 10)
    with pytest.raises(ValueError, match="same shape"):
        kendall_tau(a, b[:, :2])
    with pytest.raises(ValueError, match="batched"):
        spearman_rho(a[0, 0], b[0, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_metrics_run_on_gpu():
    a, b = (t.cuda() for t in random_maps(ties=True))
    for f in (kendall_tau, spearman_rho, mass_center_dislocation, cosine_distance):
        assert f(a, b).device == a.device
    assert topk_intersection(a, b, 5).device == a.device


def test_constant_and_zero_maps_give_counted_nan_not_numbers():
    """Two identical all-zero maps used to score top-k 0.12, dislocation 18.97 px, cosine distance 1.0."""
    from smoothgeo.core.metrics import DegenerateMapWarning, degenerate_pairs

    a, b = random_maps(n=4, h=6, w=6)
    a[1] = 0.0
    b[1] = 0.0          # both all zero
    b[2] = 3.0          # constant
    a[3, 0, 0] = float("nan")
    assert degenerate_pairs(a, b).tolist() == [False, True, True, True]
    for name, f in (("topk", lambda u, v: topk_intersection(u, v, 5)), ("kendall", kendall_tau),
                    ("spearman", spearman_rho), ("mass", mass_center_dislocation), ("cosine", cosine_distance)):
        with pytest.warns(DegenerateMapWarning, match="3 of 4 map pairs"):
            got = f(a, b)
        assert bool(got[1:].isnan().all()), name
        assert bool(got[0].isfinite()), name


def test_no_warning_for_ordinary_maps(recwarn):
    a, b = random_maps(n=3, h=5, w=5)
    topk_intersection(a, b, 4), kendall_tau(a, b), cosine_distance(a, b)
    assert not [w for w in recwarn if "map pairs" in str(w.message)]
