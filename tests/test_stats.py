"""Statistics on synthetic data with known answers (CPU, seconds)."""
import numpy as np
import pandas as pd
import pytest

from smoothgeo.analysis import stats


def rng(seed=0):
    return np.random.default_rng(seed)


def tidy(values_by_seed, **extra):
    rows = []
    for s, vals in enumerate(values_by_seed):
        for i, v in enumerate(vals):
            rows.append({"seed": s, "image": i, "value": v, **extra})
    return pd.DataFrame(rows)


def test_bootstrap_one_seed_matches_normal_theory():
    v = rng(1).normal(0.5, 1.0, 400)
    r = stats.hierarchical_bootstrap(tidy([v]), "value", rng=rng(2), n_boot=4000)
    assert r.estimate == pytest.approx(v.mean())
    se = v.std(ddof=1) / np.sqrt(len(v))
    assert (r.ci_high - r.ci_low) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert r.ci_low < v.mean() < r.ci_high
    assert r.p_value < 0.001 and r.n_images == 400 and r.n_seeds == 1


def test_bootstrap_null_effect_has_large_p_and_is_reproducible():
    v = rng(3).normal(0, 1, 200)
    v = v - v.mean()
    a = stats.hierarchical_bootstrap(tidy([v]), "value", rng=rng(4), n_boot=2000)
    b = stats.hierarchical_bootstrap(tidy([v]), "value", rng=rng(4), n_boot=2000)
    assert a == b
    assert a.p_value > 0.5 and a.ci_low < 0 < a.ci_high


def test_bootstrap_seed_variation_widens_interval():
    g = rng(5)
    offsets = [-1.0, 0.0, 1.0, 0.5, -0.5]
    seeds = [1 + o + g.normal(0, 0.01, 100) for o in offsets]
    r = stats.hierarchical_bootstrap(tidy(seeds), "value", rng=rng(6), n_boot=2000)
    images_only = stats.hierarchical_bootstrap(tidy([seeds[0]]), "value", rng=rng(6), n_boot=2000)
    assert r.n_seeds == 5
    assert (r.ci_high - r.ci_low) > 50 * (images_only.ci_high - images_only.ci_low)


def test_shared_image_draws_keep_shared_image_variance():
    g = rng(7)
    image_effect = g.normal(0, 1, 60)                    # the same hard/easy images for every seed
    seeds = [image_effect + g.normal(0, 0.01, 60) for _ in range(4)]
    shared = stats.hierarchical_bootstrap(tidy(seeds), "value", rng=rng(8), n_boot=2000)
    indep = stats.hierarchical_bootstrap(tidy(seeds), "value", rng=rng(8), n_boot=2000, image_draws="independent")
    se = image_effect.std(ddof=1) / np.sqrt(60)
    assert (shared.ci_high - shared.ci_low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert (indep.ci_high - indep.ci_low) < 0.7 * (shared.ci_high - shared.ci_low)


def test_paired_difference_uses_only_images_both_classify_correctly():
    g = rng(9)
    base_vals = [g.uniform(0, 1, 50) for _ in range(3)]
    base = tidy(base_vals, attacked=True)
    treat = base.copy()
    treat["value"] += 0.1
    treat.loc[treat.image == 3, ["attacked", "value"]] = [False, 100.0]   # misclassified by the treatment
    base.loc[(base.image == 7) & (base.seed == 1), ["attacked", "value"]] = [False, -100.0]
    r = stats.paired_difference(treat, base, "value", rng=rng(10), n_boot=500)
    assert r.estimate == pytest.approx(0.1)
    assert r.ci_low == pytest.approx(0.1) and r.ci_high == pytest.approx(0.1)
    assert r.n_images == 49 and r.n_seeds == 3
    d = stats.paired_frame(treat, base, "value")
    assert len(d) == 3 * 49 - 1


def test_paired_difference_pairing_choices():
    a = tidy([np.ones(10), np.ones(10)], attacked=True)
    b = tidy([np.zeros(10)], attacked=True)
    with pytest.raises(ValueError, match="pairing='mean'"):
        stats.paired_difference(a, b, "value", rng=rng())
    r = stats.paired_difference(a, b, "value", rng=rng(), pairing="mean", n_boot=200)
    assert r.estimate == pytest.approx(1.0) and r.n_seeds == 1


def test_holm_known_values_and_nan():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])
    adj = stats.holm([0.5, np.nan, 0.01])
    assert np.isnan(adj[1]) and adj[2] == pytest.approx(0.02) and adj[0] == pytest.approx(0.5)
    assert stats.holm([0.9, 0.8])[0] <= 1.0


def test_partial_spearman_removes_confounder():
    g = rng(11)
    z = g.normal(size=200)
    x = z + 0.3 * g.normal(size=200)
    y = z + 0.3 * g.normal(size=200)
    plain = stats.partial_spearman(x, y, rng=rng(12), n_boot=300, n_perm=500)
    part = stats.partial_spearman(x, y, z, rng=rng(12), n_boot=300, n_perm=500)
    assert plain.estimate > 0.8 and plain.p_value < 0.01
    assert abs(part.estimate) < 0.2 and part.p_value > 0.05 and part.ci_low < 0 < part.ci_high
    shared = g.normal(size=200)
    part2 = stats.partial_spearman(x + shared, y + shared, z, rng=rng(13), n_boot=300, n_perm=500)
    assert part2.estimate > 0.3 and part2.p_value < 0.01 and part2.ci_low > 0


def test_within_spearman_per_seed():
    g = rng(14)
    rows = []
    for s in range(3):
        x = g.normal(size=80)
        for i in range(80):
            rows.append({"seed": s, "image": i, "lam": x[i], "change": x[i] + 0.5 * g.normal(), "noise": g.normal()})
    f = pd.DataFrame(rows)
    r = stats.within_spearman(f, "lam", "change", rng=rng(15), n_boot=200, n_perm=200)
    assert r.estimate > 0.7 and r.ci_low > 0.5 and r.p_value < 0.01 and r.n_seeds == 3
    null = stats.within_spearman(f, "lam", "noise", rng=rng(15), n_boot=200, n_perm=200)
    assert null.p_value > 0.05 and null.ci_low < 0 < null.ci_high


def transfer_frame(diag, off, seeds=1, n=40):
    rows = []
    for s in range(seeds):
        for i in range(n):
            for a in ("SM", "IG"):
                for e in ("SM", "IG"):
                    rows.append({"seed": s, "image": i, "attacked_method": a, "evaluated_method": e,
                                 "topk": diag if a == e else off, "attacked": True})
    return pd.DataFrame(rows)


def test_relative_transfer_known_ratio():
    r = stats.relative_transfer(transfer_frame(0.4, 0.7, seeds=2), rng=rng(), n_boot=200)
    assert r.estimate == pytest.approx(0.3 / 0.6)
    assert r.ci_low == pytest.approx(0.5) and r.ci_high == pytest.approx(0.5)
    assert r.n_seeds == 2 and r.n_images == 40 and r.p_value < 0.01
    d = stats.relative_transfer_difference(transfer_frame(0.4, 0.7), transfer_frame(0.5, 0.9), rng=rng(), n_boot=200)
    assert d.estimate == pytest.approx(0.5 - 0.2)


def test_relative_transfer_needs_diagonal_and_off():
    f = transfer_frame(0.4, 0.7)
    with pytest.raises(ValueError, match="diagonal"):
        stats.relative_transfer(f[f.attacked_method == f.evaluated_method], rng=rng())


def frontier_points():
    rows = []
    for fam, shift, accs, costs in (("ssr", 0.1, [0.70, 0.80, 0.90], [100, 300, 900]),
                                    ("madry", 0.0, [0.75, 0.82, 0.88, 0.95], [200, 600, 1200, 2400])):
        for a, c in zip(accs, costs):
            rows.append({"family": fam, "accuracy": a, "robustness": 1.5 - a + shift,
                         "robustness_low": 1.5 - a + shift - 0.02, "robustness_high": 1.5 - a + shift + 0.02,
                         "cost": c})
    return pd.DataFrame(rows)


def test_matched_accuracy_known_shift_over_overlap():
    r, table = stats.matched_accuracy(frontier_points(), "ssr", "madry", rng=rng(16), n_boot=500)
    assert r.estimate == pytest.approx(0.1)
    assert r.ci_low > 0.05 and r.ci_high < 0.15 and r.p_value < 0.01
    assert table.accuracy.min() == pytest.approx(0.75) and table.accuracy.max() == pytest.approx(0.90)
    assert r.n_images == 7


def test_matched_accuracy_uses_all_points_not_the_best():
    p = frontier_points()
    bad = pd.DataFrame([{"family": "ssr", "accuracy": 0.85, "robustness": 0.0}])   # one poor strength
    r, _ = stats.matched_accuracy(pd.concat([p, bad]), "ssr", "madry", rng=rng(16), n_boot=200)
    assert r.estimate < 0.1


def test_matched_cost_and_errors():
    r, table = stats.matched_cost(frontier_points(), "ssr", "madry", rng=rng(17), n_boot=200)
    assert np.isfinite(r.estimate) and "cost" in table.columns
    assert table.cost.min() == pytest.approx(200) and table.cost.max() == pytest.approx(900)
    p = frontier_points()
    far = p.assign(accuracy=np.where(p.family == "ssr", p.accuracy - 0.5, p.accuracy))
    with pytest.raises(ValueError, match="do not overlap"):
        stats.matched_accuracy(far, "ssr", "madry", rng=rng())
    with pytest.raises(ValueError, match="at least"):
        stats.matched_accuracy(p[(p.family == "madry") | (p.accuracy == 0.8)], "ssr", "madry", rng=rng())


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="Generator"):
        stats.hierarchical_bootstrap(tidy([[1.0, 2.0]]), "value", rng=0)


def test_partial_spearman_and_paired_difference_without_units_give_nan_not_errors():
    rng = np.random.default_rng(0)
    res = stats.partial_spearman([], [], [], rng=rng, n_boot=10, n_perm=10)
    assert np.isnan(res.estimate) and res.n_images == 0
    # seeds are paired as trained: a seed whose images are all misclassified leaves no difference, not an error
    t = pd.DataFrame({"seed": [0, 1], "image": [0, 0], "topk": [0.5, 0.6], "attacked": [False, True]})
    b = pd.DataFrame({"seed": [0, 1], "image": [0, 0], "topk": [0.4, 0.4], "attacked": [True, True]})
    d = stats.paired_frame(t, b, "topk")
    assert list(d.seed) == [1] and np.allclose(d["diff"], [0.2])
    none = stats.paired_difference(t.assign(attacked=False), b, "topk", rng=rng, n_boot=10)
    assert np.isnan(none.estimate) and none.n_images == 0
