"""Tests of the evaluation engine, noise floors and summaries (smoothgeo.core.evaluation): CPU, seconds."""
import ast
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import smoothgeo.core.evaluation as ev
from smoothgeo.core.evaluation import (COLUMNS, METRIC_COLUMNS, SETTING_DEFAULTS, evaluate, make_setting,
                                       noise_floor, run_setting, summarise)
from smoothgeo.store.names import setting_id

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
    assert set(full.setting) == {setting_id(f"SM-{k}", e) for k in ("topk", "random") for e in (0.05, 0.1)}
    assert (full.model == "model").all() and full.target_distance.isna().all()
    assert (full[full.kind == "topk"].beta == 10.0).all() and full[full.kind == "random"].beta.isna().all()
    assert (full.linf <= full.epsilon + 1e-6).all() and full.label_kept.all()
    mis = full[full.image == 0]
    assert not mis.attacked.any() and (mis.linf == 0).all()
    sm = full[(full.evaluated_method == "SM") & ~full.attacked]  # x_adv = x and SM is deterministic
    assert (sm.topk == 1).all() and (sm.kendall == 1).all()
    att = full[full.attacked & (full.kind == "topk") & (full.evaluated_method == "SM")]
    assert (att.topk < 1).any() and full.clean_conf.between(0, 1).all() and full.adv_conf.between(0, 1).all()
    units = list(dict.fromkeys(full.setting))  # rows by unit (in the given orders), image, evaluated method
    assert units == [setting_id(f"SM-{k}", e) for k in ("topk", "random") for e in (0.05, 0.1)]
    assert list(full.evaluated_method[:4]) == ["SM", "UG", "SM", "UG"] and list(full.image[:4]) == [0, 0, 1, 1]


def _unit(kind, epsilon, **over):
    """The setting evaluate() builds for one unit of SETTINGS."""
    return make_setting(method="SM", kind=kind, epsilon=epsilon, step_size=0.02, steps=3, k=10,
                        on_reject="backtrack", surrogates=[None] if kind == "random" else [10.0],
                        extra={"stall_window": 5, "select": "kendall"}, evaluated_methods=["SM", "UG"],
                        evaluated_options=OPTS, **over)


def test_evaluate_is_run_setting_per_unit(setup, full):
    """evaluate() is a thin loop: each unit alone through run_setting (fresh map cache) gives the same rows."""
    model, x, y = setup
    record, rows = run_setting(model, x, y, _unit("topk", 0.1), model_name="model", seed=0, batch_size=None,
                               clean_maps={})
    expected = full[full.setting == "SM-topk-eps0.1"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, expected, check_exact=True)
    assert torch.equal(record["image"], torch.arange(N)) and torch.equal(record["label"], y)
    assert (record["x_adv"] - x).abs().amax() <= 0.1 + 1e-6 and torch.equal(record["beta"], torch.full((N,), 10.0))
    # batches and an offset (a shard of the evaluation set) change the image column, not the engine
    _, shard = run_setting(model, x[2:], y[2:], _unit("random", 0.05), model_name="m", seed=0, batch_size=2,
                           clean_maps={}, offset=2)
    assert list(shard.image.unique()) == [2, 3, 4] and (shard.model == "m").all()


def test_make_setting_fills_every_key():
    s = make_setting()
    assert s["id"] == setting_id("SM-topk", 0.1) and s["name"] == "SM-topk"
    assert set(s) == set(SETTING_DEFAULTS) | {"id", "name"}
    assert s["evaluated_methods"] == ["SM"] and s["evaluated_options"] == {"SM": {}}
    s = make_setting(method="IG", kind="random", epsilon=0.05, method_options={"steps": 4},
                     evaluated_methods=["SM", "SG"], evaluated_options={"SG": {"samples": 3}})
    assert s["id"] == "IG-random-eps0.05" and s["evaluated_methods"] == ["IG", "SM", "SG"]  # attacked one first
    assert s["evaluated_options"] == {"IG": {"steps": 4}, "SM": {}, "SG": {"samples": 3}}
    s["surrogates"].append(3.0)
    s["extra"]["x"] = 1
    assert SETTING_DEFAULTS["surrogates"] == [10.0] and SETTING_DEFAULTS["extra"] == {}  # defaults not shared
    assert make_setting(name="mine", epsilon=0.0314)["id"] == "mine-eps0.0314"
    with pytest.raises(ValueError, match=r"make_setting got keys \['epsilons'\]"):
        make_setting(epsilons=[0.1])
    with pytest.raises(ValueError, match="unknown attack kind 'blur'"):
        make_setting(kind="blur")
    with pytest.raises(ValueError, match="unknown attribution method 'XX'"):
        make_setting(evaluated_methods=["XX"])


def test_engine_imports_nothing_above_core():
    """core.evaluation is a pure function of tensors: no store, data, training, analysis or pipeline import."""
    tree = ast.parse(Path(ev.__file__).read_text())
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    ours = [m for m in names if m.startswith("smoothgeo")]
    assert ours and all(m.startswith("smoothgeo.core.") for m in ours), ours


def test_noise_floor(setup):
    model, x, y = setup
    floor = noise_floor(model, x, y, methods=["SM", "IG", "SG", "UG"], method_options=OPTS, k=10, seed=0)
    assert list(floor.columns) == COLUMNS and len(floor) == 4 * N
    assert (floor.kind == "noise_floor").all() and (floor.epsilon == 0).all() and (floor.setting == "noise_floor").all()
    assert floor.restart.isna().all() and (floor.attacked == (floor.image != 0)).all()
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
    with pytest.raises(TypeError, match="partial_path"):  # resuming is the attack stage's job
        evaluate(model, x, y, **SETTINGS, partial_path="partial.csv")
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
