"""The analysis layer on synthetic tidy files written in the stages' own layouts: model registry, the claims stage
end to end (claims.csv, the support tables, metrics), the notebooks' reader (load_run), seed-level group
summaries, the report, and the rule that notebooks only read what the stages wrote."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from smoothgeo.analysis import claims
from smoothgeo.analysis.run import load_run
from smoothgeo.analysis.seed_level import group_means
from smoothgeo.store.names import family_and_seed
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
                   "options": options, "test_accuracy": 0.9 - 0.2 * cost, "val_accuracy": 0.91 - 0.2 * cost,
                   "plateau_gain": 0.002, "val_curve": [[5, 0.5], [10, 0.9 - 0.2 * cost]],
                   "seconds_per_epoch": [cost * 10], "history": [{"batches": 10}]}
            (folder / f"{name}.json").write_text(json.dumps(rec))


def _robustness(model: str) -> float:
    """Synthetic truth: smoother recipes keep more of the map under the attack (the random floor is 0.8 for
    every model, so the damage beyond noise is 0.5 natural, 0.2 SSR, 0.3 Madry)."""
    group = family_and_seed(model)[0]
    return {"natural": 0.3, "ssr10": 0.6, "madry10": 0.5}.get(group, 0.45)


def _write_attacks(results: Path, params: dict, rng) -> None:
    folder = results / "attacks"
    folder.mkdir(parents=True)
    for model in params["models"]:
        rows = []
        for s in resolve_settings(params, model, smooth="+softplus" in model):
            for em in s["evaluated_methods"]:
                base = 0.8 if s["kind"] == "random" else _robustness(model) + (0.15 if em in ("SG", "UG") else 0.0)
                for i in range(N):
                    topk = float(np.clip(base + rng.normal(0, 0.05), 0, 1))
                    rows.append({"model": model, "setting": s["id"], "attacked_method": s["method"],
                                 "kind": s["kind"], "epsilon": s["epsilon"], "image": i, "label": i % 10,
                                 "evaluated_method": em, "topk": topk, "kendall": topk, "kendall_worst": topk,
                                 "spearman": topk,
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
                              "bound_topk_change": lam * 0.3, "bound_kendall_change": lam * 0.2,
                              "lipschitz_random": lam * 4,
                              "bound_within_bound": 1.0})
        frame.to_csv(folder / f"{model}.csv.gz", index=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("run") / "results"
    out.mkdir()
    _write_training(out, SMOKE)
    _write_attacks(out, SMOKE, rng)
    _write_measures(out, SMOKE, rng)
    return out


def test_model_table_reads_family_strength_seed_and_validation(results):
    models = model_table(SMOKE, results).set_index("model")
    assert models.loc["ssr10-s1", "family"] == "ssr" and models.loc["ssr10-s1", "strength"] == 10.0
    assert models.loc["ssr10-s1", "seed"] == 1
    assert models.loc["natural-s0+softplus3", "family"] == "softplus"
    assert models.loc["natural-s0+softplus3", "strength"] == 3.0
    assert np.isnan(models.loc["natural-s0+softplus3", "test_accuracy"])   # filled from the measures
    assert models.loc["madry10-s0", "val_accuracy"] == pytest.approx(0.91 - 0.12)
    assert models.loc["madry10-s0", "plateau_gain"] == pytest.approx(0.002)


def test_model_table_names_a_missing_record(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training record"):
        model_table({"models": {"natural-s0": "natural-s0"}}, tmp_path)


@pytest.fixture(scope="module")
def claims_table(results):
    return run_claims(SMOKE, results)


def test_claims_stage_end_to_end(results, claims_table):
    table = claims_table
    assert list(table.columns) == claims.COLUMNS
    assert (results / "claims.csv").exists() and (results / "metrics.json").exists()
    for name in ("model_summary", "eps_curve", "power", "learning_curves", "replication", "not_estimable"):
        assert (results / "claims" / f"{name}.csv").exists(), name
    assert set(table.verdict) <= set(claims.VERDICTS)
    row = table.set_index("id").loc["ssr-natural-beyond"]
    assert row.effect == pytest.approx(0.3, abs=0.05)          # damage beyond noise 0.5 natural - 0.2 ssr
    tested = table.dropna(subset=["p_value"])
    assert (tested.p_adjusted >= tested.p_value - 1e-12).all()  # Holm never lowers a p-value
    for _, r in table.iterrows():                                # every verdict follows its interval
        assert r.verdict == claims.verdict(r.ci_low, r.ci_high, r.p_adjusted)
    summary = pd.read_csv(results / "claims" / "model_summary.csv").set_index("model")
    assert summary.loc["natural-s0", "topk_beyond"] == pytest.approx(0.5, abs=0.05)
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["ssr"]["topk_beyond_noise"] == pytest.approx(0.2, abs=0.05)


def test_load_run_gives_notebooks_claims_support_tables_and_answers(results, claims_table):
    params = SMOKE
    run = load_run("demo", seed=0, models=params["models"], attacks=params["attacks"],
                   comparisons=params["comparisons"], root=results.parent)
    assert set(run.claims.id) >= set(claims_table.id)
    assert list(run.claims_of(ids=["madry-natural-beyond", "ssr-natural-beyond"]).id) == [
        "madry-natural-beyond", "ssr-natural-beyond"]                # the order asked for
    assert len(run.support("model_summary")) and run.support("no-such-table").empty
    b = run.tables.beyond("SM-topk", "SM-random")
    assert (b.topk_beyond == b.topk_random - b.topk).all()
    text = run.answer(["ssr-natural-beyond", "no-such-claim"])
    row = claims_table.set_index("id").loc["ssr-natural-beyond"]
    assert f"{row.effect:+.3g}" in text and row.verdict in text     # formatted from the table, never typed
    assert "no-such-claim has no estimate" in text


def test_group_means_are_t_intervals_over_units():
    frame = pd.DataFrame({"role": ["a"] * 3 + ["b"] * 3, "model": list("pqrstu"), "v": [1.0, 2, 3, 5, 5, 5]})
    out = group_means(frame, ["v"], by="role", order=["b", "a"]).set_index("role")
    assert list(out.index) == ["b", "a"]
    half = 4.302652729911275 * 1.0 / np.sqrt(3)                     # t(0.975, 2) * sd / sqrt(n)
    assert out.loc["a", "mean"] == 2 and out.loc["a", "ci_high"] == pytest.approx(2 + half)
    assert out.loc["b", "ci_low"] == out.loc["b", "ci_high"] == 5 and out.loc["a", "n"] == 3


NOTEBOOK_COMPUTE = re.compile(r"\b(attack|evaluate|hessian_max_eig|exact_hessian_max_eig|"
                              r"gradient_lipschitz|lipschitz_measures|fit|noise_floor)\(")


@pytest.mark.parametrize("name", ["robust_training", "smoothing", "transfer", "geometry", "qualitative",
                                  "template"])
def test_notebooks_do_not_attack_train_or_measure(name):
    """Every attack and every lambda_max is computed once, by its stage; notebooks only read the records."""
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert not NOTEBOOK_COMPUTE.findall(source), f"{name} recomputes: {NOTEBOOK_COMPUTE.findall(source)}"


def test_report_warns_on_top_when_the_data_were_a_stand_in(results, claims_table, tmp_path):
    from smoothgeo.pipeline import summary

    params = tmp_path / "params.yaml"
    for standin, warned in ((None, False), ({"train": 16, "test": 16}, True)):
        data = {"dataset": "cifar10", "root": "data/raw", **({"standin": standin} if standin else {})}
        params.write_text(yaml.safe_dump({"data": data}))
        assert summary.main(["report", "--results", str(results), "--params", str(params)]) == 0
        text = (results / "SUMMARY.md").read_text()
        assert ("synthetic stand-in for cifar10" in text) == warned
        assert "### Claims" in text
