"""Captum methods as evaluated methods: the adapter equals calling Captum directly, the registered names work in
compute_maps and in the attack stage (evaluated, never attacked). Tiny random FashionCNN on 8x8 images."""
import numpy as np
import pytest
import torch

captum_attr = pytest.importorskip("captum.attr")

from smoothgeo.pipeline import attack as st  # noqa: E402
from smoothgeo.core import attributions
from smoothgeo.core import captum_methods as cm  # noqa: E402
from smoothgeo.core.evaluation import compute_maps  # noqa: E402
from smoothgeo.core.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = build_model("fashion_cnn", num_classes=10, image_size=8).eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target


def _direct(cls_name, model, x, target, seed=None, **kw):
    if seed is not None:
        torch.manual_seed(seed)
        np.random.seed(seed)
    inputs = x.clone().requires_grad_(True)
    return getattr(captum_attr, cls_name)(model).attribute(inputs, target=target, **kw).detach()


@pytest.mark.parametrize("cls_name,ours,theirs", [
    ("GuidedBackprop", {}, {}),
    ("Deconvolution", {}, {}),
    ("InputXGradient", {}, {}),
    ("DeepLift", {}, {}),
    ("IntegratedGradients", {"n_steps": 8}, {"n_steps": 8}),
    ("Occlusion", {"sliding_window_shapes": [1, 3, 3], "strides": 2},
     {"sliding_window_shapes": (1, 3, 3), "strides": 2}),
])
def test_adapter_equals_captum(model_and_data, cls_name, ours, theirs):
    model, x, target = model_and_data
    name = cm.register(f"captum:{cls_name}")
    got = attributions.attribute(name, model, x, target, **ours)
    want = _direct(cls_name, model, x, target, **theirs)
    assert got.shape == x.shape and not got.requires_grad
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_random_method_is_seeded_and_leaves_the_global_generator_alone(model_and_data):
    model, x, target = model_and_data
    name = cm.register("captum:GradientShap")
    torch.manual_seed(123)
    np.random.seed(123)
    before = torch.rand(1), np.random.rand()
    torch.manual_seed(123)
    np.random.seed(123)
    got = attributions.attribute(name, model, x, target, n_samples=4, stdevs=0.1, seed=7)
    assert (torch.rand(1), np.random.rand()) == before           # caller's random streams untouched
    want = _direct("GradientShap", model, x, target, seed=7, baselines=torch.zeros(1, 1, 8, 8), n_samples=4,
                   stdevs=0.1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    other = attributions.attribute(name, model, x, target, n_samples=4, stdevs=0.1, seed=8)
    assert not torch.equal(got, other)


def test_maps_follow_the_convention(model_and_data):
    model, x, target = model_and_data
    cm.ensure(["captum:GuidedBackprop", "captum:DeepLift", "SM"])
    gbp = compute_maps(model, x, target, "captum:GuidedBackprop")
    assert gbp.shape == (3, 8, 8)
    raw = _direct("GuidedBackprop", model, x, target)
    torch.testing.assert_close(gbp, attributions.attribution_map(raw, x))       # gradient-like: times the input
    dl = compute_maps(model, x, target, "captum:DeepLift")
    torch.testing.assert_close(dl, attributions.attribution_map(_direct("DeepLift", model, x, target),
                                                                times_input=False))   # already includes it


def test_not_attackable_and_bad_names(model_and_data):
    model, x, target = model_and_data
    name = cm.register("captum:GuidedBackprop")
    with pytest.raises(ValueError, match="not attacked"):
        attributions.attribute(name, model, x, target, create_graph=True)
    for bad in ("captum:NoSuchMethod", "captum:LayerGradCam"):
        with pytest.raises(ValueError, match="captum:"):
            cm.register(bad)


def _stage_params(**over):
    attacks = {"n_images": 4, "evaluated_methods": ["SM", "captum:GuidedBackprop"],
               "defaults": {"steps": 1, "k": 5}, "settings": {"SM-topk": {"method": "SM", "kind": "topk"}}}
    attacks.update(over)
    return {"seed": 0, "data": {}, "methods": {}, "attacks": attacks}


def test_attack_stage_accepts_captum_as_evaluated_only():
    assert st.check_params(_stage_params())["evaluated_methods"] == ["SM", "captum:GuidedBackprop"]
    with pytest.raises(ValueError, match="evaluated_methods"):
        st.check_params(_stage_params(evaluated_methods=["captum:NoSuchMethod"]))
    with pytest.raises(ValueError, match="method"):
        st.check_params(_stage_params(settings={"X": {"method": "captum:GuidedBackprop", "kind": "topk"}}))


def test_attack_stage_evaluates_a_captum_method(tmp_path, monkeypatch, model_and_data):
    from smoothgeo.data import images as experiments
    from smoothgeo.store.checkpoints import save_checkpoint

    model, x, target = model_and_data
    save_checkpoint(tmp_path / "natural-s0.pt", model, arch="fashion_cnn", num_classes=10,
                    model_kwargs={"image_size": 8}, meta={"recipe": "natural"})
    monkeypatch.setattr(experiments, "eval_images", lambda data, n, *, seed, device, root=None: (x[:n], target[:n]))
    params = _stage_params(n_images=3)
    st.run(params, "natural-s0", checkpoints=tmp_path, records=tmp_path / "r", tables=tmp_path / "t",
           timings=tmp_path / "tm", partials=tmp_path / "p", log=lambda m: None)
    table = st.load_table(tmp_path / "t" / "natural-s0.csv.gz")
    assert list(table.evaluated_method[:2]) == ["SM", "captum:GuidedBackprop"]
    assert table.kendall.notna().all() and len(table) == 3 * 2
