"""Claims table: verdict rule, orientation, Holm, and each claim type on synthetic tidy frames."""
import numpy as np
import pandas as pd
import pytest

from smoothgeo.analysis import claims
from smoothgeo.analysis.stats import BootResult


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("lo, hi, p, expected", [
    (0.1, 0.3, 0.01, "reproduces"),
    (0.1, 0.3, 0.2, "partly"),
    (0.1, 0.3, float("nan"), "partly"),
    (-0.1, 0.3, 0.01, "not shown"),
    (0.0, 0.3, 0.01, "not shown"),          # the interval touches 0: not above it
    (-0.3, -0.1, 0.01, "contradicted"),
    (-0.3, -0.1, 0.9, "contradicted"),
    (float("nan"), float("nan"), float("nan"), "not shown"),
])
def test_verdict_rule(lo, hi, p, expected):
    assert claims.verdict(lo, hi, p) == expected


def test_claim_row_orientation_flips_effect_and_interval():
    r = claims.claim_row("RQ4", "c", "mass_center", BootResult(-0.5, -0.8, -0.2, 0.01, 10, 3), rule="r", sign=-1)
    assert r["effect"] == 0.5 and (r["ci_low"], r["ci_high"]) == (0.2, 0.8)
    assert r["n_images"] == 10 and r["n_seeds"] == 3


def test_claims_table_columns_holm_and_partly():
    rows = [claims.claim_row("RQ4", f"c{i}", "topk", BootResult(0.1, 0.01, 0.2, p, 50, 3), rule="r")
            for i, p in enumerate([0.001, 0.03, 0.04])]
    t = claims.claims_table(rows)
    assert list(t.columns) == claims.COLUMNS
    np.testing.assert_allclose(t.p_adjusted, [0.003, 0.06, 0.06])
    assert t.verdict.tolist() == ["reproduces", "partly", "partly"]
    assert set(t.verdict) <= set(claims.VERDICTS)


def test_parse_model():
    assert claims.parse_model("ssr10-s2") == ("ssr10", 2)
    assert claims.parse_model("madry0.1-s0") == ("madry0.1", 0)
    assert claims.parse_model("natural-s1+softplus3") == ("natural+softplus3", 1)
    assert claims.parse_model("natural") == ("natural", 0)


def attack_table(effects, *, n=40, seeds=3, methods=("SM",), extra_settings=(), seed=0):
    """effects: {family: {method: mean topk}}; mass_center = 3 * (1 - topk)."""
    g = rng(seed)
    hard = g.uniform(-0.1, 0.1, n)
    rows = []
    for fam, by_method in effects.items():
        for s in range(seeds):
            for a in methods:
                for e in methods:
                    for setting in ("base", *extra_settings):
                        topk = by_method[a] + hard + g.normal(0, 0.02, n) + (0.1 if a != e else 0)
                        if setting != "base":
                            topk = topk - 0.05                     # a stronger ensemble member
                        for i in range(n):
                            rows.append({"model": f"{fam}-s{s}", "setting": setting, "attacked_method": a,
                                         "evaluated_method": e, "kind": "topk", "epsilon": 0.1, "image": i,
                                         "topk": topk[i], "mass_center": 3 * (1 - topk[i]), "attacked": i != 5})
    return pd.DataFrame(rows)


def test_robustness_gain_orientation_for_both_kinds_of_metric():
    t = attack_table({"natural": {"SM": 0.3}, "ssr10": {"SM": 0.5}, "bad": {"SM": 0.1}})
    row = claims.robustness_gain(t, recipe="ssr10", rng=rng(), n_boot=300)
    assert row["effect"] == pytest.approx(0.2, abs=0.02) and row["ci_low"] > 0
    assert row["n_images"] == 39 and row["n_seeds"] == 3
    mc = claims.robustness_gain(t, recipe="ssr10", metric="mass_center", rng=rng(), n_boot=300)
    assert mc["effect"] == pytest.approx(0.6, abs=0.06) and mc["ci_low"] > 0      # lower dislocation: positive
    bad = claims.robustness_gain(t, recipe="bad", rng=rng(), n_boot=300)
    table = claims.claims_table([row, mc, bad])
    assert table.verdict.tolist() == ["reproduces", "reproduces", "contradicted"]


def test_worst_over_the_attack_ensemble_counts():
    t = attack_table({"natural": {"SM": 0.3}, "ssr10": {"SM": 0.5}}, extra_settings=("beta1",))
    both = claims.robustness_gain(t, recipe="ssr10", rng=rng(), n_boot=200)
    only = claims.robustness_gain(t[~(t.model.str.startswith("ssr10") & (t.setting == "beta1"))], recipe="ssr10",
                                  rng=rng(), n_boot=200)
    # treatment's worst case drops by 0.05 when its stronger member is kept
    assert both["effect"] == pytest.approx(0.2, abs=0.02) and only["effect"] == pytest.approx(0.25, abs=0.02)


def test_smoothing_gain_pairs_methods_on_the_same_models():
    t = attack_table({"natural": {"SM": 0.3, "SG": 0.45}}, methods=("SM", "SG"))
    row = claims.smoothing_gain(t, variant="SG", rng=rng(), n_boot=200, metric="topk")
    assert row["effect"] == pytest.approx(0.15, abs=0.02) and row["n_seeds"] == 3
    assert "SG" in row["claim"]


def measures_table(families=("natural",), seeds=3, n=60, slope=1.0, seed=1):
    g = rng(seed)
    rows = []
    for fam in families:
        for s in range(seeds):
            lam = g.uniform(0, 1, n)
            for i in range(n):
                pred = 1 + lam[i]
                rows.append({"model": f"{fam}-s{s}", "image": i, "correct": True, "lambda_max": lam[i],
                             "bound_predicted_grad_change": pred,
                             "bound_grad_change": slope * 0.5 * pred + 0.05 * g.normal(),
                             "bound_map_change": slope * pred + 0.1 * g.normal(),
                             "bound_within_bound": 1.0})
    return pd.DataFrame(rows)


def test_curvature_within_direction():
    m = measures_table(n=40)
    rows = []
    for model, f in m.groupby("model"):
        for _, r in f.iterrows():
            rows.append({"model": model, "image": r.image, "attacked_method": "SM", "evaluated_method": "SM",
                         "topk": 0.8 - 0.5 * r.lambda_max + 0.02 * np.sin(r.image), "attacked": True})
    a = pd.DataFrame(rows)
    row = claims.curvature_within(m, a, family="natural", rng=rng(), n_boot=100, n_perm=100)
    assert row["effect"] > 0.9 and row["ci_low"] > 0 and row["n_seeds"] == 3
    flipped = claims.curvature_within(m, a.assign(topk=-a.topk), family="natural", rng=rng(), n_boot=100,
                                      n_perm=100)
    assert flipped["effect"] < -0.9


def test_curvature_across_controls_for_accuracy():
    g = rng(3)
    acc = g.uniform(0.6, 0.9, 30)
    models = pd.DataFrame({"model": [f"m{i}-s0" for i in range(30)], "clean_accuracy": acc,
                           "lambda_max": acc + 0.02 * g.normal(size=30), "topk": -acc + 0.02 * g.normal(size=30),
                           "n_images": 50})
    plain = claims.curvature_across(models, covariate=None, rng=rng(), n_boot=200, n_perm=500)
    partial = claims.curvature_across(models, rng=rng(), n_boot=200, n_perm=500)
    assert plain["effect"] > 0.8 and plain["ci_low"] > 0
    assert partial["ci_low"] < 0 < partial["ci_high"]
    assert claims.claims_table([partial]).verdict.item() == "not shown"


def test_model_table_aggregates_per_model():
    m = measures_table(families=("natural", "ssr10"), seeds=1, n=10).assign(
        relative_curvature=1.0, lipschitz_adversarial=2.0, lipschitz_adversarial_relative=0.1,
        lipschitz_adversarial_map=3.0)
    a = attack_table({"natural": {"SM": 0.3}, "ssr10": {"SM": 0.5}}, n=10, seeds=1)
    t = claims.model_table(m, a, where={"attacked_method": "SM", "evaluated_method": "SM"})
    assert sorted(t.model) == ["natural-s0", "ssr10-s0"] and (t.clean_accuracy == 1).all()
    assert t.set_index("model").topk["ssr10-s0"] > t.set_index("model").topk["natural-s0"]


def test_transfer_difference_sign():
    t = attack_table({"natural": {"SM": 0.3, "IG": 0.3}, "ssr10": {"SM": 0.6, "IG": 0.6}}, methods=("SM", "IG"),
                     seeds=2)
    row = claims.transfer_difference(t, smooth="ssr10", rng=rng(), n_boot=200)
    # natural (1-0.4)/(1-0.3) = 0.857; ssr10 (1-0.7)/(1-0.6) = 0.75
    assert row["effect"] == pytest.approx(0.857 - 0.75, abs=0.03)
    rt = claims.relative_transfer_table(t, rng=rng(), n_boot=100)
    assert rt.family.tolist() == ["natural", "ssr10"] and rt.relative_transfer.iloc[0] == pytest.approx(0.857, abs=0.03)


def test_bound_claims():
    m = measures_table()
    row = claims.bound_predictiveness(m, family="natural", rng=rng(), n_boot=100, n_perm=100)
    assert row["effect"] > 0.8 and row["metric"] == "bound_map_change"
    cov = claims.bound_coverage(m, family="natural", rng=rng(), n_boot=100)
    assert cov["effect"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="bound_setting"):
        claims.bound_predictiveness(m.drop(columns=["bound_grad_change"]), family="natural", rng=rng())


def test_frontier_comparison_row():
    pts = pd.DataFrame({"family": ["ssr"] * 3 + ["madry"] * 3, "accuracy": [0.7, 0.8, 0.9, 0.72, 0.8, 0.88],
                        "topk": [0.6, 0.5, 0.4, 0.5, 0.42, 0.34], "n_seeds": 3})
    row, table = claims.frontier_comparison(pts, "ssr", "madry", rng=rng(), n_boot=100)
    assert row["effect"] > 0 and row["n_seeds"] == 3 and len(table) == 21


def test_plain_words_and_write(tmp_path):
    row = claims.claims_table([claims.claim_row("RQ4", "SSR makes SM more robust", "topk",
                                                BootResult(0.2, 0.1, 0.3, 0.001, 40, 3), rule="r")]).iloc[0]
    text = claims.plain_words(row)
    assert text.startswith("The paper says: SSR makes SM more robust.") and "support" in text and "+0.2" in text
    t = claims.claims_table([row.to_dict()])
    claims.write_claims(t, tmp_path / "claims.csv")
    assert list(pd.read_csv(tmp_path / "claims.csv").columns) == claims.COLUMNS
    with pytest.raises(ValueError, match="exactly the columns"):
        claims.write_claims(t.drop(columns=["rule"]), tmp_path / "x.csv")


