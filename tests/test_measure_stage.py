"""Scale-invariant geometry, independent-neighbour Lipschitz estimates, the bound test, and the measure stage."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from smoothgeo.core import geometry, hessian, lipschitz


def tiny_net(seed=0, classes=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 12), nn.ReLU(),
                         nn.Linear(12, classes)).double().eval()


def scaled(model, t):
    m = copy.deepcopy(model)
    with torch.no_grad():
        m[-1].weight.mul_(t)
        m[-1].bias.mul_(t)
    return m


def images(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 6, 6), generator=g, dtype=torch.float64)


INVARIANT = ("relative_curvature", "lambda_max_fixed_scale")


def test_invariant_measures_do_not_change_when_the_last_layer_is_scaled():
    model, x = tiny_net(), images()
    base = geometry.logit_geometry(model, x, lambda_max=hessian.hessian_max_eig(model, x))
    for t in (0.1, 7.0):
        other = scaled(model, t)
        g = geometry.logit_geometry(other, x, lambda_max=hessian.hessian_max_eig(other, x))
        for key in INVARIANT:
            torch.testing.assert_close(g[key], base[key], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(g["grad_logit_norm"], t * base["grad_logit_norm"])
        torch.testing.assert_close(g["logit_margin"], t * base["logit_margin"])
        # the brief's normalised ratios remove t^2 of J but keep p = softmax(t f): not invariant
        assert not torch.allclose(g["lambda_max_over_grad_logit2"], base["lambda_max_over_grad_logit2"], rtol=1e-3)
        assert not torch.allclose(g["clean_conf"], base["clean_conf"], rtol=1e-3)


def test_relative_curvature_ignores_a_common_logit_shift():
    model, x = tiny_net(), images()

    class Shift(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.w = nn.Parameter(torch.randn(36, dtype=torch.float64))

        def forward(self, v):
            return self.inner(v) + (v.flatten(1) @ self.w).unsqueeze(1)

    a = geometry.logit_geometry(model, x)
    b = geometry.logit_geometry(Shift(model).eval(), x)
    for key in INVARIANT:
        torch.testing.assert_close(a[key], b[key])


def test_relative_curvature_known_value_on_a_linear_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4, bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(4, 36, dtype=torch.float64))   # orthonormal class gradients
    g = geometry.logit_geometry(model, images())
    # lambda_max(P I P) = 1, ||e_c - e_r||^2 = 2
    torch.testing.assert_close(g["relative_curvature"], torch.full((6,), 0.5, dtype=torch.float64))


def test_lipschitz_measures_scale_invariance_and_own_seed():
    model, x = tiny_net(), images(4)
    kw = dict(epsilon=0.1, samples=3, seed=5)
    a = lipschitz.lipschitz_measures(model, x, **kw)
    b = lipschitz.lipschitz_measures(scaled(model, 4.0), x, **kw)
    torch.testing.assert_close(b["gradient"], 4.0 * a["gradient"])
    torch.testing.assert_close(b["relative_gradient"], a["relative_gradient"])
    torch.testing.assert_close(b["map"], a["map"])
    again = lipschitz.lipschitz_measures(model, x, **kw)
    torch.testing.assert_close(again["gradient"], a["gradient"])
    other = lipschitz.lipschitz_measures(model, x, epsilon=0.1, samples=3, seed=6)
    assert not torch.allclose(other["map"], a["map"])
    # the random ratio agrees with the existing estimator on the same neighbours
    ref = lipschitz.gradient_lipschitz(model, x, epsilon=0.1, samples=3, seed=5)
    torch.testing.assert_close(a["gradient"], ref)
    adv = lipschitz.lipschitz_measures(model, x, neighbours="adversarial", steps=2, **kw)
    assert (adv["gradient"] >= a["gradient"] - 1e-12).all()


def test_lipschitz_of_a_linear_model_gradient_is_zero():
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).double()
    out = lipschitz.lipschitz_measures(model, images(3), epsilon=0.05, samples=2, seed=0,
                                      neighbours="adversarial", steps=2)
    assert torch.all(out["gradient"] == 0) and torch.all(out["relative_gradient"] == 0)


def test_bound_test_columns_and_invariance():
    model, x = tiny_net(), images(5)
    g = torch.Generator().manual_seed(3)
    x_adv = (x + 0.05 * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1)).clamp(0, 1)
    lip = lipschitz.lipschitz_measures(model, x, epsilon=0.05, samples=4, seed=11)
    out = lipschitz.bound_test(model, x, x_adv, lip["gradient"], map_lipschitz=lip["map"])
    torch.testing.assert_close(out["predicted_grad_change"], lip["gradient"] * out["delta_norm"])
    assert torch.equal(out["within_bound"], (out["grad_change"] <= out["predicted_grad_change"] * (1 + 1e-6)).double())
    s = lipschitz.bound_test(scaled(model, 3.0), x, x_adv, 3.0 * lip["gradient"])
    torch.testing.assert_close(s["relative_grad_change"], out["relative_grad_change"])
    torch.testing.assert_close(s["map_change"], out["map_change"])
    zero = lipschitz.bound_test(model, x, x, lip["gradient"])
    assert torch.all(zero["grad_change"] == 0) and torch.all(zero["within_bound"] == 1)
    with pytest.raises(ValueError, match="shape"):
        lipschitz.bound_test(model, x, x[:2], lip["gradient"])


# ------------------------------------------------------------------------------------------------ the stage

import gzip  # noqa: E402
import json  # noqa: E402

import yaml  # noqa: E402

from smoothgeo.data import images as experiments
from smoothgeo.pipeline import measure as measure_stage  # noqa: E402
from smoothgeo.store.checkpoints import save_checkpoint  # noqa: E402
from smoothgeo.core.models import build_model  # noqa: E402

SMALL = {"n_images": 4, "batch_size": 3, "lipschitz": {"epsilon": 0.05, "samples": 2, "steps": 1, "seed": 7},
         "bound_setting": "SM-topk-0.1", "robust": {"steps": 3},
         "explain": {"samples": 2, "infidelity_samples": 2, "deletion_steps": 4}}


@pytest.fixture
def stage(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("fashion_cnn", num_classes=10)
    save_checkpoint(tmp_path / "ckpt" / "natural-s0.pt", model, arch="fashion_cnn", num_classes=10)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((4, 1, 28, 28), generator=g)
    y = model.eval()(x).argmax(1)
    y[3] = (y[3] + 1) % 10                                    # one misclassified image
    monkeypatch.setattr(experiments, "eval_images", lambda data, n, *, seed, device, root=None: (x[:n], y[:n]))
    x_adv = (x[[0, 2]] + 0.05 * torch.sign(torch.randn((2, 1, 28, 28), generator=g))).clamp(0, 1)
    (tmp_path / "att").mkdir()
    x_adv = torch.cat([x_adv, x[[1]]])                       # image 1 left unperturbed: no bound-test row
    torch.save({"SM-topk-0.1": {"x_adv": x_adv, "image": torch.tensor([0, 2, 1])}}, tmp_path / "att" / "natural-s0.pt")

    def run(measures=SMALL, model="natural-s0"):
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"seed": 0, "device": "cpu", "data": {"dataset": "fashion_mnist",
                                                                               "root": "data/raw"},
                                          "measures": measures}))
        return measure_stage.main(["--params", str(params), "--model", model, "--checkpoints", str(tmp_path / "ckpt"),
                                   "--attacks", str(tmp_path / "att"), "--out", str(tmp_path / "out"),
                                   "--explanations", str(tmp_path / "expl"), "--timings", str(tmp_path / "tim")])
    return run, tmp_path


def test_stage_writes_deterministic_measures_and_timings(stage):
    run, tmp = stage
    assert run() == 0
    path = tmp / "out" / "natural-s0.csv.gz"
    expl = pd.read_csv(tmp / "expl" / "natural-s0.csv.gz")   # the faithfulness / stability table beside it
    assert set(expl.method) == {"SM", "IG", "SG", "UG"} and expl.deletion_auc.between(0, 1).all()
    first = path.read_bytes()
    frame = pd.read_csv(path)
    assert list(frame.image) == [0, 1, 2, 3] and frame.correct.tolist() == [True, True, True, False]
    for col in ("lambda_max", "relative_curvature", "lambda_max_fixed_scale", "lipschitz_random",
                "lipschitz_adversarial_map", "clean_conf", "logit_margin", "grad_loss_norm"):
        assert frame[col].notna().all(), col
    assert (frame.lipschitz_adversarial >= frame.lipschitz_random - 1e-6).all()
    assert frame.bound_grad_change.notna().tolist() == [True, False, True, False]
    assert (frame.bound_linf.dropna() <= 0.05 + 1e-6).all()
    assert set(frame.bound_setting) == {"SM-topk-0.1"}
    timing = json.loads((tmp / "tim" / "measure-natural-s0.json").read_text())
    assert timing["peak_rss_mib"] > 0 and timing["wall_seconds"] > 0 and timing["bound_test"]
    assert run() == 0
    assert path.read_bytes() == first                          # identical bytes on a re-run
    with gzip.open(path, "rt") as fh:
        assert fh.readline().startswith("model,image,label")


def test_stage_softplus_copy_and_missing_record(stage):
    run, tmp = stage
    with pytest.warns(UserWarning, match="does not exist"):
        assert run(model="natural-s0+softplus3") == 0
    frame = pd.read_csv(tmp / "out" / "natural-s0+softplus3.csv.gz")
    assert "bound_grad_change" not in frame.columns and frame.lambda_max.notna().all()


@pytest.mark.parametrize("measures, message", [
    ({"n_image": 3}, "unknown key"),
    ({"n_images": 0}, "n_images"),
    ({"lipschitz": {"epsilon": -1}}, "lipschitz.epsilon"),
    ({"hessian_method": "fast"}, "hessian_method"),
    ({**SMALL, "bound_setting": "nope"}, "has no setting 'nope'"),
    ({**SMALL, "n_images": 2}, "n_images"),
])
def test_stage_errors_are_one_line(stage, capsys, measures, message):
    run, _ = stage
    assert run(measures) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
