"""The attack stage (smoothgeo.pipeline.attack) and target-map construction (smoothgeo.core.targets): tiny random
FashionCNN on 8x8 synthetic images, a few attack steps; CPU, seconds."""
import dataclasses
import gzip
import inspect
import json

import pandas as pd
import pytest
import torch
import yaml

from smoothgeo.pipeline import attack as st
from smoothgeo.pipeline import attack_config
from smoothgeo.core import attacks
from smoothgeo.core.evaluation import evaluate, make_setting
from smoothgeo.data import images as experiments
from smoothgeo.store.checkpoints import save_checkpoint
from smoothgeo.store.names import parse_model_name, setting_id
from smoothgeo.store.tables import read_table, read_table_text, table_text
from smoothgeo.core.models import build_model
from smoothgeo.core.targets import pick_targets, target_distance, target_maps

N = 6


def _params(**attacks_over):
    attacks = {
        "n_images": N, "batch_size": None, "evaluated_methods": ["SM", "IG", "SG"],
        "defaults": {"epsilons": [0.1], "step_size": 0.02, "steps": 2, "k": 10, "restarts": 1,
                     "convention": "grad_times_input", "on_reject": "revert", "surrogates": [10.0],
                     "direction": {"IG": {"steps": 2}}},
        "settings": {
            "SM-topk": {"method": "SM", "kind": "topk", "epsilons": [0.05, 0.1], "models": "all"},
            "IG-random": {"method": "IG", "kind": "random", "steps": 3, "models": ["natural-*"]},
            "SM-targeted": {"method": "SM", "kind": "targeted", "models": ["natural-s0"]},
            "SM-mass": {"method": "SM", "kind": "mass_center", "models": ["ssr*"]},
        },
    }
    attacks.update(attacks_over)
    return {"seed": 0, "device": "cpu", "data": {"dataset": "fashion_mnist", "root": "unused"},
            "methods": {"IG": {"steps": 4}, "SG": {"noise_level": 0.1, "samples": 3}}, "attacks": attacks}


@pytest.fixture
def stage(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("fashion_cnn", num_classes=10, image_size=8)
    save_checkpoint(tmp_path / "ckpt" / "natural-s0.pt", model, arch="fashion_cnn", num_classes=10,
                    model_kwargs={"image_size": 8}, meta={"recipe": "natural"})
    x = torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[-1] = (y[-1] + 1) % 10  # one misclassified image (not attacked), and at least two labels
    calls = {"eval_images": 0}

    def fake_eval_images(data, n, *, seed, device, root=None):
        calls["eval_images"] += 1
        return x[:n].to(device), y[:n].to(device)

    monkeypatch.setattr(experiments, "eval_images", fake_eval_images)

    def go(params=None, model="natural-s0", out="out", **kw):
        d = tmp_path / out
        return st.run(params or _params(), model, checkpoints=tmp_path / "ckpt", records=d / "records",
                      tables=d / "tables", timings=d / "timings", partials=d / "partials", device="cpu",
                      log=kw.pop("log", lambda m: None), **kw), d

    go.tmp, go.x, go.y = tmp_path, x, y
    return go


def test_outputs_load_and_have_one_row_per_image_setting_and_method(stage):
    rec, d = stage()
    records = torch.load(d / "records" / "natural-s0.pt", weights_only=True)
    ids = ["SM-topk-eps0.05", "SM-topk-eps0.1", "IG-random-eps0.1", "SM-targeted-eps0.1"]
    assert list(records) == ids  # SM-mass applies to ssr* only
    table = read_table(d / "tables" / "natural-s0.csv.gz")
    assert list(table.columns) == st.COLUMNS
    pd.testing.assert_frame_equal(table, read_table_text(table_text(table)), check_exact=True)
    pd.testing.assert_frame_equal(table, st.load_table(d / "tables" / "natural-s0.csv.gz"), check_exact=True)
    assert len(table) == N * len(ids) * 3
    assert (table.groupby(["setting", "image"]).size() == 3).all()
    assert list(table.evaluated_method[:3]) == ["SM", "IG", "SG"]
    for sid, r in records.items():
        eps = float(sid.rsplit("eps", 1)[1])
        assert r["x_adv"].dtype == torch.float32 and r["x_adv"].shape == stage.x.shape
        assert (r["x_adv"] - stage.x).abs().max() <= eps + 1e-6
        assert r["x_adv"].min() >= 0 and r["x_adv"].max() <= 1
        assert torch.equal(r["image"], torch.arange(N)) and torch.equal(r["label"], stage.y)
        assert not r["attacked"][-1] and r["attacked"][:-1].all()
        assert torch.equal(r["x_adv"][-1], stage.x[-1])  # not attacked: unchanged
    # every diagnostic the installed attack() reports is kept, in the record and the table
    reported = {f.name for f in dataclasses.fields(attacks.AttackResult)}
    for name in ("accepted_steps", "stalled", "stalled_runs", "rejected_steps", "zero_directions", "restart"):
        assert (name in records["SM-topk-eps0.1"]) == (name in reported)
        assert table[name].notna().all() == (name in reported)
    # targeted: targets with another label, distances reported only there
    assert (stage.y[records["SM-targeted-eps0.1"]["target_image"]] != stage.y).all()
    targeted = table[table.kind == "targeted"]
    assert targeted.target_distance.notna().all() and targeted.clean_target_distance.notna().all()
    assert table[table.kind != "targeted"].target_distance.isna().all()
    # ReLU model through its softplus surrogate; random kind uses none
    assert (table[table.kind == "topk"].beta == 10.0).all() and table[table.kind == "random"].beta.isna().all()
    # deterministic gzip (mtime 0) and the timings record
    assert (d / "tables" / "natural-s0.csv.gz").read_bytes()[4:8] == b"\0\0\0\0"
    timing = json.loads((d / "timings" / "attack-natural-s0.json").read_text())
    assert timing["computed"] == ids and timing["peak_rss_mib"] > 0 and timing["wall_seconds"] > 0
    assert not (d / "partials" / "natural-s0").exists()  # partials removed after success


def test_same_inputs_give_identical_table(stage):
    _, a = stage(out="a")
    _, b = stage(out="b")
    assert gzip.decompress((a / "tables" / "natural-s0.csv.gz").read_bytes()) == \
        gzip.decompress((b / "tables" / "natural-s0.csv.gz").read_bytes())


def test_resume_after_interruption_skips_finished_settings(stage, monkeypatch):
    _, ref = stage(out="ref")
    real = st.run_setting
    done = []

    def interrupted(*a, **kw):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(a[3]["id"])
        return real(*a, **kw)

    monkeypatch.setattr(st, "run_setting", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage(out="run")
    parts = stage.tmp / "run" / "partials" / "natural-s0"
    assert sorted(p.name for p in parts.glob("*.pt")) == ["SM-topk-eps0.05.pt", "SM-topk-eps0.1.pt"]
    assert not (stage.tmp / "run" / "tables").exists()

    again = []
    monkeypatch.setattr(st, "run_setting", lambda *a, **kw: again.append(a[3]["id"]) or real(*a, **kw))
    rec, d = stage(out="run")
    assert again == ["IG-random-eps0.1", "SM-targeted-eps0.1"]
    assert rec["resumed"] == ["SM-topk-eps0.05", "SM-topk-eps0.1"]
    pd.testing.assert_frame_equal(pd.read_csv(d / "tables" / "natural-s0.csv.gz"),
                                  pd.read_csv(ref / "tables" / "natural-s0.csv.gz"), check_exact=True)
    a = torch.load(d / "records" / "natural-s0.pt", weights_only=True)
    b = torch.load(ref / "records" / "natural-s0.pt", weights_only=True)
    assert all(torch.equal(a[s]["x_adv"], b[s]["x_adv"]) for s in b)


def test_partial_from_other_settings_is_discarded_with_a_message(stage, monkeypatch):
    real = st.run_setting

    def stop(*a, **kw):
        if a[3]["id"] == "IG-random-eps0.1":
            raise KeyboardInterrupt

    monkeypatch.setattr(st, "run_setting", lambda *a, **kw: stop(*a) or real(*a, **kw))
    with pytest.raises(KeyboardInterrupt):
        stage(out="run")
    params = _params()
    params["attacks"]["defaults"]["steps"] = 3  # changes SM-topk's configuration
    params["attacks"]["settings"].pop("SM-targeted")
    messages, calls = [], []
    monkeypatch.setattr(st, "run_setting", lambda *a, **kw: calls.append(a[3]["id"]) or real(*a, **kw))
    stage(params, out="run", log=messages.append)
    assert calls == ["SM-topk-eps0.05", "SM-topk-eps0.1", "IG-random-eps0.1"]
    assert sum("discarding partial" in m and "other settings" in m for m in messages) == 2


def test_softplus_copy_is_attacked_through_its_own_gradient(stage):
    params = _params(settings={"SM-topk": {"method": "SM", "kind": "topk", "models": ["natural-*"]}})
    _, d = stage(params, model="natural-s0+softplus3")
    table = pd.read_csv(d / "tables" / "natural-s0+softplus3.csv.gz")
    assert set(table.model) == {"natural-s0+softplus3"} and table.beta.isna().all()
    assert len(table) == N * 3


def test_surrogate_ensemble_reports_the_winning_member(stage):
    params = _params(settings={"SM-topk": {"method": "SM", "kind": "topk", "surrogates": [3.0, 30.0]}})
    _, d = stage(params)
    r = torch.load(d / "records" / "natural-s0.pt", weights_only=True)["SM-topk-eps0.1"]
    assert set(r["member"].tolist()) <= {0, 1}
    assert torch.equal(r["beta"], torch.tensor([3.0, 30.0])[r["member"]])
    table = pd.read_csv(d / "tables" / "natural-s0.csv.gz")
    assert set(table.beta) <= {3.0, 30.0}


def test_settings_resolve_per_model():
    params = _params()
    ids = lambda m, **kw: [s["id"] for s in st.resolve_settings(params, m, **kw)]
    assert ids("ssr10-s1") == ["SM-topk-eps0.05", "SM-topk-eps0.1", "SM-mass-eps0.1"]
    assert ids("natural-s1") == ["SM-topk-eps0.05", "SM-topk-eps0.1", "IG-random-eps0.1"]
    s = st.resolve_settings(params, "natural-s1")
    assert s[0]["method_options"] == {} and s[2]["method_options"] == {"steps": 4}
    assert s[2]["direction_options"] == {"steps": 2} and s[2]["steps"] == 3 and s[0]["steps"] == 2
    assert s[0]["evaluated_options"] == {"SM": {}, "IG": {"steps": 4}, "SG": {"noise_level": 0.1, "samples": 3}}
    assert all(x["surrogates"] == [None] for x in st.resolve_settings(params, "natural-s1", smooth=True))
    params["attacks"]["settings"]["SG50"] = {"method": "SG", "kind": "topk", "method_options": {"samples": 50},
                                             "direction": None}
    sg = st.resolve_settings(params, "x")[-1]
    assert sg["method_options"] == {"noise_level": 0.1, "samples": 50} and sg["direction_options"] is None
    assert parse_model_name("natural-s0+softplus3") == ("natural-s0", 3.0)
    assert parse_model_name("natural-s0") == ("natural-s0", None)
    assert st.parse_model_name is parse_model_name  # the stage re-exports the store's
    assert all(x["id"] == setting_id(x["name"], x["epsilon"]) for x in st.resolve_settings(params, "natural-s1"))
    assert setting_id("SM-topk", 0.0314) == "SM-topk-eps0.0314" and setting_id("a", 1e-5) == "a-eps1e-05"


def test_make_setting_matches_resolve_settings():
    """make_setting's defaults are the stage's built-in ones: a bare setting resolves to the same dict."""
    params = {"attacks": {"n_images": 1, "settings": {"SM-topk": {"method": "SM", "kind": "topk"}}}}
    assert st.resolve_settings(params, "m") == [make_setting(name="SM-topk")]
    full = st.resolve_settings(_params(), "natural-s0")
    assert all(set(s) == set(make_setting()) for s in full)


def test_evaluate_gives_the_stage_rows(stage):
    """One engine: evaluate() with a setting's configuration gives the rows the attack stage wrote for it."""
    _, d = stage()
    table = read_table(d / "tables" / "natural-s0.csv.gz")
    model = st.load_model("natural-s0", checkpoints=stage.tmp / "ckpt")
    params = _params()
    common = dict(evaluated_methods=["SM", "IG", "SG"], step_size=0.02, steps=2, k=10, restarts=1,
                  on_reject="revert", surrogates=[10.0], method_options=params["methods"],
                  direction_options={"IG": {"steps": 2}}, model_name="natural-s0", progress=False)
    rows = pd.concat([evaluate(model, stage.x, stage.y, attacked_methods="SM", kinds=["topk"],
                               epsilons=[0.05, 0.1], **common),
                      evaluate(model, stage.x, stage.y, attacked_methods="IG", kinds=["random"],
                               **{**common, "steps": 3}),
                      evaluate(model, stage.x, stage.y, attacked_methods="SM", kinds=["targeted"], **common)],
                     ignore_index=True)
    pd.testing.assert_frame_equal(rows, table, check_exact=True)


@pytest.mark.parametrize("path, value, match", [
    (("settings", "SM-topk", "kind"), "top", r"attacks\.settings\.SM-topk\.kind='top' is invalid; allowed: topk"),
    (("settings", "SM-topk", "method"), "XX", r"settings\.SM-topk\.method='XX' is invalid; allowed: IG, SG, SM, UG"),
    (("settings", "SM-topk", "epsilons"), [0.1, 2], r"SM-topk\.epsilons=\[0\.1, 2\] is invalid; allowed: a number"),
    (("settings", "SM-topk", "stepz"), 3, r"SM-topk\.stepz=3 is invalid; allowed: keys method, kind"),
    (("settings", "SM-topk", "models"), [], r"SM-topk\.models=\[\] is invalid; allowed: 'all'"),
    (("defaults", "on_reject"), "never", r"defaults\.on_reject='never' is invalid; allowed: .*revert"),
    (("defaults", "surrogates"), [0, 3], r"defaults\.surrogates=\[0, 3\] is invalid; allowed: a non-empty list"),
    (("defaults", "steps"), 1.5, r"defaults\.steps=1\.5 is invalid; allowed: an integer >= 0"),
    (("evaluated_methods",), ["SM", "GG"], r"attacks\.evaluated_methods=\['SM', 'GG'\] is invalid"),
    (("n_images",), 0, r"attacks\.n_images=0 is invalid; allowed: an integer >= 1"),
    (("extra",), 1, r"attacks\.extra=1 is invalid; allowed: keys n_images"),
])
def test_bad_config_raises_one_line_error(path, value, match):
    params = _params()
    node = params["attacks"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=match) as info:
        st.check_params(params)
    assert "\n" not in str(info.value)


def test_docstring_example_is_valid():
    text = attack_config.__doc__.split("complete example::")[1].split("\n\n")[1]
    params = {"methods": {"SG": {"noise_level": 0.1, "samples": 20}}, **yaml.safe_load(text)}
    if "backtrack" not in attacks.ON_REJECT:  # attacks.py before the non-stalling policy landed
        params["attacks"]["defaults"]["on_reject"] = "revert"
    if "stall_window" not in inspect.signature(attacks.attack).parameters:
        params["attacks"]["defaults"].pop("stall_window")
    ids = lambda m: [s["id"] for s in st.resolve_settings(params, m)]
    assert ids("natural-s0")[:3] == ["SM-topk-eps0.05", "SM-topk-eps0.1", "SM-topk-eps0.2"]
    assert "SG50-topk-eps0.1" in ids("natural-s0") and "SG50-topk-eps0.1" not in ids("natural-s1")
    assert "SM-targeted-eps0.1" not in ids("wd-s0")
    sg50 = [s for s in st.resolve_settings(params, "natural-s0") if s["name"] == "SG50-topk"][0]
    assert sg50["method_options"]["samples"] == 50 and sg50["direction_options"] is None
    assert sg50["surrogates"] == [1.0, 3.0, 10.0, 30.0] and sg50["restarts"] == 2


def test_optional_attack_options_are_checked_against_attack():
    params = _params()
    params["attacks"]["defaults"]["stall_window"] = 3
    if "stall_window" in inspect.signature(attacks.attack).parameters:
        assert all(s["extra"] == {"stall_window": 3} for s in st.resolve_settings(params, "natural-s0"))
        params["attacks"]["defaults"]["stall_window"] = 0
        with pytest.raises(ValueError, match=r"defaults\.stall_window=0 is invalid; allowed: an integer in"):
            st.check_params(params)
    else:
        with pytest.raises(ValueError, match=r"stall_window=3 is invalid; allowed: nothing: the installed"):
            st.check_params(params)


def test_bad_model_name_and_missing_section():
    with pytest.raises(ValueError, match=r"model name 'a\+softplusx' is invalid"):
        parse_model_name("a+softplusx")
    with pytest.raises(ValueError, match=r"model name '\+softplus3' is invalid"):
        parse_model_name("+softplus3")
    with pytest.raises(ValueError, match=r"attacks=None is invalid"):
        st.check_params({})


def test_cli_writes_the_outputs(stage, monkeypatch, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_params()))
    monkeypatch.chdir(tmp_path)
    st.main(["--params", "params.yaml", "--model", "natural-s0", "--checkpoints", "ckpt", "--device", "cpu"])
    assert (tmp_path / "data/attacks/natural-s0.pt").exists()
    assert (tmp_path / "results/attacks/natural-s0.csv.gz").exists()
    assert (tmp_path / "results/timings/attack-natural-s0.json").exists()


# ---------------------------------------------------------------------------------------------- targets
def test_pick_targets_is_deterministic_and_picks_another_label():
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    assert pick_targets(labels).tolist() == [2, 2, 4, 4, 5, 2]
    with pytest.raises(ValueError, match="at least two different labels"):
        pick_targets(torch.tensor([3, 3, 3]))


def test_target_maps_are_the_clean_maps_of_the_target_images(stage):
    model = st.load_model("natural-s0", checkpoints=stage.tmp / "ckpt")
    index, maps = target_maps(model, stage.x, stage.y, "SM")
    from smoothgeo.core.evaluation import compute_maps
    with torch.no_grad():
        pred = model(stage.x).argmax(1)
    own = compute_maps(model, stage.x, pred, "SM")
    torch.testing.assert_close(maps, own[index])
    assert torch.allclose(target_distance(maps, own[index]), torch.zeros(N), atol=1e-10)
    assert (target_distance(own, maps) >= 0).all()


def test_images_all_attacks_the_misclassified_image_too(stage):
    """attacks.images: all (the toy profiles) attacks every image, with the model's prediction as its label."""
    params = _params(images="all")
    _, d = stage(params)
    records = torch.load(d / "records" / "natural-s0.pt", weights_only=True)
    for r in records.values():
        assert r["attacked"].all() and torch.equal(r["label"], stage.y)   # true labels kept
    moved = records["SM-topk-eps0.1"]
    assert not torch.equal(moved["x_adv"][-1], stage.x[-1])   # the misclassified image is attacked now
    with pytest.raises(ValueError, match=r"attacks\.images='some' is invalid"):
        st.check_params(_params(images="some"))
