"""The statistics of the claims on synthetic data with known answers: Holm, Student-t intervals over seeds,
across-model partial Spearman, and the edge cases (too few units give NaN, never an error)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from smoothgeo.analysis import stats
from smoothgeo.analysis.seed_level import across_correlation, seed_effect, t_interval, within_correlation


def test_holm_known_values_and_nan():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    adj = stats.holm([0.5, np.nan, 0.01])
    assert np.isnan(adj[1]) and adj[2] == pytest.approx(0.02) and adj[0] == pytest.approx(0.5)
    assert stats.holm([0.9, 0.8])[0] <= 1.0
    assert np.isnan(stats.holm([np.nan])).all() and stats.holm([]).size == 0


def test_t_interval_matches_scipy():
    v = np.array([0.1, 0.3, 0.2, 0.5, 0.25])
    mean, lo, hi, p = t_interval(v)
    res = st.ttest_1samp(v, 0.0)
    ci = res.confidence_interval(0.95)
    assert mean == pytest.approx(v.mean()) and lo == pytest.approx(ci.low) and hi == pytest.approx(ci.high)
    assert p == pytest.approx(res.pvalue)
    one = t_interval([0.4])
    assert one[0] == 0.4 and np.isnan(one[1]) and np.isnan(one[3])
    assert np.isnan(t_interval([])[0])


def test_seed_effect_with_no_shared_seeds_is_nan_not_an_error():
    a = pd.DataFrame({"seed": [0, 0], "image": [0, 1], "v": [1.0, 2.0]})
    b = pd.DataFrame({"seed": [1, 1], "image": [0, 1], "v": [1.0, 2.0]})
    res = seed_effect(a, b, "v")
    assert np.isnan(res.estimate) and res.n_seeds == 0
    res = seed_effect(a, b, "v", pairing="index")            # k-th smallest seeds paired instead
    assert res.estimate == 0 and res.n_seeds == 1


def test_across_correlation_partial_removes_a_confounder():
    g = np.random.default_rng(3)
    acc = g.uniform(0.7, 0.9, 30)
    models = pd.DataFrame({"acc": acc, "x": acc + g.normal(0, 0.01, 30), "y": acc + g.normal(0, 0.01, 30),
                           "seed": np.arange(30) % 5})
    plain = across_correlation(models, "x", "y", rng=np.random.default_rng(0), n_perm=500, n_boot=500)
    partial = across_correlation(models, "x", "y", rng=np.random.default_rng(0), covariate="acc", n_perm=500,
                                 n_boot=500)
    assert plain.estimate > 0.8 and plain.p_value < 0.01 and plain.n_models == 30 and plain.n_seeds == 5
    assert abs(partial.estimate) < 0.4 and partial.ci_low < 0 < partial.ci_high


def test_correlations_with_too_few_units_are_nan():
    few = pd.DataFrame({"x": [1.0, 2, 3], "y": [1.0, 2, 3]})
    assert np.isnan(across_correlation(few, "x", "y", rng=np.random.default_rng(0)).estimate)
    frame = pd.DataFrame({"model": "m", "image": [0, 1, 2], "x": [1.0, 2, 3], "y": [3.0, 2, 1]})
    assert np.isnan(within_correlation(frame, "x", "y", rng=np.random.default_rng(0)).estimate)


def test_fast_ranks_equal_scipy_rankdata_with_and_without_ties():
    from smoothgeo.analysis.seed_level import _partial_r, _ranks

    g = np.random.default_rng(5)
    for v in (g.normal(size=50), g.integers(0, 5, 60).astype(float), np.array([2.0, 2.0]), np.array([1.0])):
        np.testing.assert_array_equal(_ranks(v), st.rankdata(v))
    x, y = g.normal(size=40), g.normal(size=40)
    assert _partial_r(x, y, None) == pytest.approx(st.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(_partial_r(np.ones(5), y[:5], None))       # a constant column: no correlation, NaN
