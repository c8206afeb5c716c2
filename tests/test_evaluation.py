"""Tests of the evaluation engine, noise floors and summaries (smoothgeo.core.evaluation): CPU, seconds."""
import json

import pandas as pd
import pytest
import torch
from torch import nn

import smoothgeo.core.evaluation as ev
from smoothgeo.core.evaluation import COLUMNS, METRIC_COLUMNS, evaluate, noise_floor, summarise

SIZE, CLASSES, N = 10, 3, 5
OPTS = {"IG": {"steps": 4}, "SG": {"samples": 4}, "UG": {"samples": 4, "radius": 0.1}}
SETTINGS = dict(attacked_methods="SM", evaluated_methods=["SM", "UG"], kinds=["topk", "random"],
                epsilons=[0.05, 0.1], step_size=0.02, steps=3, k=10, method_options=OPTS, progress=False)


@pytest.fixture(scope="module")
def setup():
    """A random-init ReLU CNN, N images labelled with its predictions except image 0 (misclassified)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * SIZE * SIZE, 16), nn.ReLU(), nn.Linear(16, CLASSES)).eval()
    x = torch.rand(N, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % CLASSES
    return model, x, y


@pytest.fixture(scope="module")
def full(setup):
    model, x, y = setup
    return evaluate(model, x, y, **SETTINGS)


def test_columns_and_one_row_per_combination(setup, full):
    assert list(full.columns) == COLUMNS
    assert len(full) == N * 2 * 2 * 2  # images x kinds x epsilons x evaluated methods
    keys = ["image", "kind", "epsilon", "attacked_method", "evaluated_method"]
    assert (full.groupby(keys).size() == 1).all()
    assert set(full.evaluated_method) == {"SM", "UG"} and set(full.attacked_method) == {"SM"}
    assert (full.linf <= full.epsilon + 1e-6).all() and full.label_kept.all()
    mis = full[full.image == 0]
    assert not mis.attacked.any() and (mis.linf == 0).all()
    sm = full[(full.evaluated_method == "SM") & ~full.attacked]  # x_adv = x and SM is deterministic
    assert (sm.topk == 1).all() and (sm.kendall == 1).all()
    att = full[full.attacked & (full.kind == "topk") & (full.evaluated_method == "SM")]
    assert (att.topk < 1).any() and full.clean_conf.between(0, 1).all() and full.adv_conf.between(0, 1).all()


def test_resume_skips_finished_units_and_gives_same_frame(setup, full, tmp_path, monkeypatch):
    model, x, y = setup
    path = tmp_path / "partial.csv"
    evaluate(model, x, y, **{**SETTINGS, "kinds": ["topk"]}, partial_path=path)  # "interrupted" after topk
    written = pd.read_csv(path)
    assert set(written.kind) == {"topk"} and "config_hash" in written.columns
    assert json.loads((tmp_path / "partial.csv.config.json").read_text())["steps"] == SETTINGS["steps"]

    calls = []
    real_attack = ev.attack
    monkeypatch.setattr(ev, "attack", lambda *a, **kw: calls.append(kw["kind"]) or real_attack(*a, **kw))
    resumed = evaluate(model, x, y, **SETTINGS, partial_path=path)
    assert calls == ["random", "random"]  # the two topk units came from the file
    pd.testing.assert_frame_equal(resumed, full, check_exact=True)
    calls.clear()
    pd.testing.assert_frame_equal(evaluate(model, x, y, **SETTINGS, partial_path=path), full, check_exact=True)
    assert calls == []


def test_changed_configuration_is_not_mixed(setup, tmp_path):
    model, x, y = setup
    path = tmp_path / "partial.csv"
    evaluate(model, x, y, **{**SETTINGS, "kinds": ["random"], "epsilons": [0.05]}, partial_path=path)
    with pytest.raises(ValueError, match=r"different configuration \(differs in: steps\)"):
        evaluate(model, x, y, **{**SETTINGS, "steps": 4}, partial_path=path)
    # the pipeline's choice: warn, start over, overwrite the stale file; the result is a fresh run's
    changed = {**SETTINGS, "kinds": ["random"], "epsilons": [0.05], "steps": 4}
    with pytest.warns(UserWarning, match="different configuration.*starting over"):
        restarted = evaluate(model, x, y, **changed, partial_path=path, on_mismatch="restart")
    pd.testing.assert_frame_equal(restarted, evaluate(model, x, y, **changed), check_exact=True)
    assert pd.read_csv(path).config_hash.nunique() == 1  # the stale rows are gone, not mixed in
    with pytest.raises(ValueError, match="on_mismatch must be 'raise' or 'restart'"):
        evaluate(model, x, y, **changed, partial_path=path, on_mismatch="ignore")


def test_noise_floor(setup):
    model, x, y = setup
    floor = noise_floor(model, x, y, methods=["SM", "IG", "SG", "UG"], method_options=OPTS, k=10, seed=0)
    assert list(floor.columns) == COLUMNS and len(floor) == 4 * N
    assert (floor.kind == "noise_floor").all() and (floor.epsilon == 0).all()
    for m in ("SM", "IG"):
        det = floor[floor.evaluated_method == m]
        assert (det.topk == 1.0).all() and (det.kendall == 1.0).all() and (det.mass_center == 0).all()
    assert (floor[floor.evaluated_method == "SG"].topk < 1).any()  # two independent noise draws
    again = noise_floor(model, x, y, methods=["SM", "IG", "SG", "UG"], method_options=OPTS, k=10, seed=0)
    pd.testing.assert_frame_equal(floor, again, check_exact=True)


def test_summarise(full):
    table = summarise(full)
    assert list(table.columns[:5]) == ["kind", "epsilon", "attacked_method", "evaluated_method", "n"]
    assert [c for c in table.columns[5:]] == [f"{m}_{s}" for m in METRIC_COLUMNS for s in ("mean", "sem")]
    assert len(table) == 2 * 2 * 2 and (table.n == N - 1).all()  # the misclassified image is dropped
    row = table.iloc[0]
    sel = full[(full.kind == row.kind) & (full.epsilon == row.epsilon) & (full.evaluated_method == row.evaluated_method)
               & full.attacked]
    assert row.topk_mean == pytest.approx(sel.topk.mean()) and row.topk_sem == pytest.approx(sel.topk.sem())


def test_bad_arguments(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="unknown attribution method 'XX'"):
        evaluate(model, x, y, **{**SETTINGS, "evaluated_methods": ["XX"]})
    with pytest.raises(ValueError, match="unknown attack kind 'blur'"):
        evaluate(model, x, y, **{**SETTINGS, "kinds": ["blur"]})
    with pytest.raises(ValueError, match="method_options / direction_options have keys"):
        evaluate(model, x, y, **{**SETTINGS, "method_options": {"IG ": {}}})
    with pytest.raises(ValueError, match=r"k must be in \[1, 100\]"):
        noise_floor(model, x, y, methods=["SM"], k=101)


def test_ensemble_settings_reach_the_attack(setup, full):
    model, x, y = setup
    one = evaluate(model, x, y, **{**SETTINGS, "kinds": ["topk"]}, surrogates=[10.0])  # = beta 10, the default
    pd.testing.assert_frame_equal(one, full[full.kind == "topk"].reset_index(drop=True), check_exact=True)
    ens = evaluate(model, x, y, **{**SETTINGS, "kinds": ["topk"], "epsilons": [0.1]}, surrogates=[3.0, 10.0])
    single = one[one.epsilon == 0.1].reset_index(drop=True)
    sm = (ens.evaluated_method == "SM") & ens.attacked
    assert (ens[sm].kendall.to_numpy() <= single[sm].kendall.to_numpy() + 1e-6).all()


def test_kendall_blocks_give_identical_values():
    """compare_maps / attack use smaller Kendall blocks for speed; the value must not change by a bit."""
    from smoothgeo.core.attacks import KENDALL_BLOCK
    from smoothgeo.core.metrics import kendall_tau
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 28, 28, generator=g), torch.rand(7, 28, 28, generator=g)
    ties = (b * 4).round()  # many ties
    for m1, m2 in ((a, b), (a, ties), (ties, ties.flip(0))):
        assert torch.equal(kendall_tau(m1, m2, max_elements=KENDALL_BLOCK), kendall_tau(m1, m2))
    assert torch.equal(torch.as_tensor(ev.compare_maps(a, ties, 10)["kendall"]), kendall_tau(a, ties).double())


def test_random_floor_draws_do_not_depend_on_the_method(setup, monkeypatch):
    """The random attack takes `steps` draws per restart whatever the method; random_steps fixes them apart
    from the other kinds' steps, so per-method steps can share one floor."""
    model, x, y = setup
    calls = []
    real_attack = ev.attack
    monkeypatch.setattr(ev, "attack", lambda *a, **kw: calls.append((kw["method"], kw["kind"], kw["steps"]))
                        or real_attack(*a, **kw))
    for method, steps in (("SM", 3), ("IG", 2)):
        evaluate(model, x, y, **{**SETTINGS, "attacked_methods": method, "evaluated_methods": [method],
                                 "epsilons": [0.1], "steps": steps}, random_steps=4)
    assert calls == [("SM", "topk", 3), ("SM", "random", 4), ("IG", "topk", 2), ("IG", "random", 4)]
    from smoothgeo.core.attacks import attack
    sm = attack(model, x, y, method="SM", kind="random", steps=4, k=10, restarts=2)
    ig = attack(model, x, y, method="IG", kind="random", steps=4, k=10, restarts=2, method_options=OPTS["IG"])
    a = sm.attacked
    assert torch.equal(sm.accepted_steps + sm.rejected_steps, ig.accepted_steps + ig.rejected_steps)
    # steps x restarts sign draws, plus the uniform start of the second restart
    assert bool((sm.accepted_steps[a] + sm.rejected_steps[a] == 2 * 4 + 1).all())
