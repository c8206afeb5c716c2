"""The analysis layer on synthetic tidy tables: model registry, per-model tables, the claims stage end to end,
and the rule that notebooks only read what the stages wrote."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from smoothgeo.analysis import frames as analysis
from smoothgeo.analysis import claims
from smoothgeo.pipeline.attack import COLUMNS, resolve_settings
from smoothgeo.store.atomic import load_params
from smoothgeo.analysis.results import model_table
from smoothgeo.pipeline.summary import run_claims

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_params(ROOT / "profiles" / "smoke.yaml")
N = 12


def _write_training(results: Path, params: dict) -> None:
    folder = results / "training"
    folder.mkdir(parents=True)
    for kind in ("scratch", "finetune"):
        for name, entry in params["train"][kind].items():
            options = {k: v for k, v in entry.items() if k not in ("recipe", "seed", "init", "lr", "max_batches")}
            cost = {"natural": 0.1, "weight_decay": 0.1, "ssr": 0.3, "madry": 0.6, "ig_norm": 3.0}[entry["recipe"]]
            rec = {"name": name, "recipe": entry["recipe"], "seed": entry.get("seed", 0), "init": entry.get("init"),
                   "options": options, "test_accuracy": 0.9 - 0.2 * cost, "seconds_per_epoch": [cost * 10],
                   "history": [{"batches": 10}]}
            (folder / f"{name}.json").write_text(json.dumps(rec))


def _robustness(model: str) -> float:
    """Synthetic truth: smoother recipes keep more of the map."""
    group = claims.parse_model(model)[0]
    return {"natural": 0.3, "ssr10": 0.6, "madry10": 0.5}.get(group, 0.45)


def _write_attacks(results: Path, params: dict, rng) -> None:
    folder = results / "attacks"
    folder.mkdir(parents=True)
    for model in params["models"]:
        rows = []
        for s in resolve_settings(params, model, smooth="+softplus" in model):
            for em in s["evaluated_methods"]:
                base = _robustness(model) + (0.15 if em in ("SG", "UG") else 0.0)
                for i in range(N):
                    topk = float(np.clip(base + rng.normal(0, 0.05), 0, 1))
                    rows.append({"model": model, "setting": s["id"], "attacked_method": s["method"],
                                 "kind": s["kind"], "epsilon": s["epsilon"], "image": i, "label": i % 10,
                                 "evaluated_method": em, "topk": topk, "kendall": topk, "spearman": topk,
                                 "mass_center": 2 * (1 - topk), "cosine": 1 - topk, "score": topk,
                                 "target_distance": topk if s["kind"] == "targeted" else np.nan,
                                 "clean_target_distance": 1.0 if s["kind"] == "targeted" else np.nan,
                                 "linf": s["epsilon"], "attacked": i != 0,
                                 "label_kept": True, "clean_conf": 0.9, "adv_conf": 0.8, "restart": 0,
                                 "member": 0, "beta": 10.0, "accepted_steps": 2, "rejected_steps": 0,
                                 "stalled": False, "stalled_runs": 0, "zero_directions": 0})
        pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / f"{model}.csv.gz", index=False)


def _write_measures(results: Path, params: dict, rng) -> None:
    folder = results / "measures"
    folder.mkdir(parents=True)
    for model in params["models"]:
        lam = (1 - _robustness(model)) * rng.lognormal(0, 0.3, N)
        frame = pd.DataFrame({"model": model, "image": np.arange(N), "label": np.arange(N) % 10,
                              "prediction": np.arange(N) % 10, "correct": np.arange(N) != 0,
                              "test_accuracy": 0.8, "lambda_max": lam, "relative_curvature": lam * 2,
                              "lambda_max_fixed_scale": lam * 3, "lipschitz_adversarial": lam * 4,
                              "lipschitz_adversarial_map": lam * 5, "bound_grad_change": lam,
                              "bound_predicted_grad_change": lam * 1.5, "bound_map_change": lam * 0.5,
                              "bound_within_bound": 1.0})
        frame.to_csv(folder / f"{model}.csv.gz", index=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("results")
    _write_training(out, SMOKE)
    _write_attacks(out, SMOKE, rng)
    _write_measures(out, SMOKE, rng)
    return out


def test_model_table_reads_family_strength_seed_and_cost(results):
    models = model_table(SMOKE, results).set_index("model")
    assert models.loc["ssr10-s1", "family"] == "ssr" and models.loc["ssr10-s1", "strength"] == 10.0
    assert models.loc["ssr10-s1", "seed"] == 1
    assert models.loc["natural-s0+softplus3", "family"] == "softplus"
    assert models.loc["natural-s0+softplus3", "strength"] == 3.0
    assert np.isnan(models.loc["natural-s0+softplus3", "test_accuracy"])   # filled from the measures
    assert models.loc["madry10-s0", "cost_vs_natural"] == pytest.approx(6.0)


def test_model_table_names_a_missing_record(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training record"):
        model_table({"models": {"natural-s0": "natural-s0"}}, tmp_path)


def test_frontier_points_take_every_strength_and_start_at_natural(results):
    from smoothgeo.analysis.results import load_attacks
    models = model_table(SMOKE, results)
    atk = load_attacks(results, models.model)
    points = analysis.frontier_points(atk, models, families=["ssr", "madry"], baseline=["natural-s0", "natural-s1"],
                                      setting="SM-topk-eps0.1", rng=np.random.default_rng(0), n_boot=50)
    ssr = points[points.family == "ssr"].sort_values("strength")
    assert list(ssr.strength) == [0.0, 10.0]
    assert ssr.robustness.iloc[-1] > ssr.robustness.iloc[0]         # synthetic truth: ssr10 is more robust
    assert (points.robustness_low <= points.robustness).all() and (points.robustness <= points.robustness_high).all()


def test_diagnostics_report_stalls_and_winning_betas(results):
    from smoothgeo.analysis.results import load_attacks
    diag = analysis.diagnostics(load_attacks(results, ["natural-s0"]))
    row = diag[diag.setting == "SM-topk-eps0.1"].iloc[0]
    assert row.stall_rate == 0 and row.images == N - 1 and "10: 100%" in row.winning_beta


def test_claims_stage_end_to_end(results):
    table = run_claims(SMOKE, results, n_boot=100)
    assert list(table.columns) == claims.COLUMNS
    assert (results / "claims.csv").exists() and (results / "metrics.json").exists()
    assert (results / "claims" / "frontier_points.csv").exists()
    assert set(table.verdict) <= set(claims.VERDICTS)
    assert set(table.rq) == {"RQ1", "RQ2", "RQ3", "RQ4"}
    ssr = table[table.claim.str.startswith("ssr10 training makes SM more robust to the top-k")].iloc[0]
    assert ssr.effect == pytest.approx(0.3, abs=0.05) and ssr.ci_low > 0       # 0.6 - 0.3 in the synthetic data
    tested = table.dropna(subset=["p_value"])
    assert (tested.p_adjusted >= tested.p_value - 1e-12).all()                   # Holm never lowers a p-value
    untested = table[table.p_value.isna()]                                      # e.g. cost ranges that do not overlap
    assert (untested.verdict == "not shown").all() and untested.rule.str.contains("not computable").all()
    for _, row in table.iterrows():                                              # every verdict follows its interval
        assert row.verdict == claims.verdict(row.ci_low, row.ci_high, row.p_adjusted)


NOTEBOOK_COMPUTE = re.compile(r"\b(attack|evaluate|hessian_max_eig|exact_hessian_max_eig|"
                              r"gradient_lipschitz|lipschitz_measures|fit|noise_floor)\(")


@pytest.mark.parametrize("name", ["robust_training", "smoothing", "transfer", "geometry", "qualitative",
                                  "template"])
def test_notebooks_do_not_attack_train_or_measure(name):
    """Every attack and every lambda_max is computed once, by its stage; notebooks only read the records."""
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert not NOTEBOOK_COMPUTE.findall(source), f"{name} recomputes: {NOTEBOOK_COMPUTE.findall(source)}"


def test_report_warns_on_top_when_the_data_were_a_stand_in(results, tmp_path):
    from smoothgeo.pipeline import summary

    run_claims(SMOKE, results, n_boot=50)
    params = tmp_path / "params.yaml"
    for standin, warned in ((None, False), ({"train": 16, "test": 16}, True)):
        data = {"dataset": "cifar10", "root": "data/raw", **({"standin": standin} if standin else {})}
        params.write_text(yaml.safe_dump({"data": data}))
        assert summary.main(["report", "--results", str(results), "--params", str(params)]) == 0
        text = (results / "SUMMARY.md").read_text()
        assert ("synthetic stand-in for cifar10" in text) == warned
        assert "### Claims" in text
