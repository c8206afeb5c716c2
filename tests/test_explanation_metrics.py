"""Faithfulness, the literature's stability metrics, LENS and sparseness, and robust accuracy: each against a
reference (Captum, a closed form, a case worked by hand)."""
import pytest
import torch
from torch import nn

from smoothgeo.core.attributions import saliency
from smoothgeo.core.faithfulness import deletion_insertion, infidelity
from smoothgeo.core.metrics import gini_sparseness, lens_recall, topk_intersection
from smoothgeo.core.stability import stability, uniform_perturbations
from smoothgeo.core.threat import robust_correct

captum_metrics = pytest.importorskip("captum.metrics", reason="captum is a pinned test dependency")


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(beta=5), nn.Flatten(), nn.Linear(4 * 36, 8),
                         nn.Softplus(beta=5), nn.Linear(8, 3)).eval()


def _data(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


# -------------------------------------------------------------------------------------------------- LENS
def test_lens_recall_by_hand():
    """A top-1 pixel moved by one pixel: plain top-k 0, 3-LENS 1; moved by two: both 0."""
    a = torch.zeros(1, 5, 5)
    a[0, 2, 2] = 1.0
    b1 = torch.zeros(1, 5, 5)
    b1[0, 2, 3] = 1.0
    b2 = torch.zeros(1, 5, 5)
    b2[0, 2, 4] = 1.0
    a, b1, b2 = a + 1e-3 * torch.arange(25.).view(1, 5, 5) * 0, b1, b2
    assert float(topk_intersection(a + 1e-6, b1 + 1e-6, 1)) == 0
    assert float(lens_recall(a + 1e-6, b1 + 1e-6, 1)) == 1
    assert float(lens_recall(a + 1e-6, b2 + 1e-6, 1)) == 0
    assert float(lens_recall(a + 1e-6, b2 + 1e-6, 1, window=5)) == 1


def test_lens_recall_window_one_is_topk_and_never_below_it():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 10, 10, generator=g), torch.rand(7, 10, 10, generator=g)
    assert torch.allclose(lens_recall(a, b, 15, window=1), topk_intersection(a, b, 15))
    assert bool((lens_recall(a, b, 15) >= topk_intersection(a, b, 15)).all())
    with pytest.raises(ValueError, match="odd integer"):
        lens_recall(a, b, 15, window=2)


def test_gini_sparseness_closed_forms():
    uniform = torch.ones(1, 4, 4)
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 1, 2] = 3.0
    assert abs(float(gini_sparseness(uniform))) < 1e-12
    assert abs(float(gini_sparseness(one_hot)) - (1 - 1 / 16)) < 1e-12   # (P - 1) / P for a single pixel
    assert torch.isnan(gini_sparseness(torch.zeros(1, 4, 4))).all()


# ------------------------------------------------------------------------------------------- faithfulness
def test_deletion_insertion_by_hand():
    """A linear 'model' whose class-0 logit is the sum of two pixels: deleting them in the map's order."""
    class TwoPixels(nn.Module):
        def forward(self, x):
            s = 10 * (x[:, 0, 0, 0] + x[:, 0, 0, 1])
            return torch.stack([s, torch.zeros_like(s)], 1)

    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, :2] = 1.0
    good = torch.tensor([[[2.0, 1.0], [0.0, -1.0]]])    # the two pixels that matter first
    bad = torch.tensor([[[0.0, -1.0], [2.0, 1.0]]])     # them last
    y = torch.tensor([0])
    g, b = deletion_insertion(TwoPixels(), x, good, y, steps=4), deletion_insertion(TwoPixels(), x, bad, y, steps=4)
    assert float(g["deletion_auc"]) < float(b["deletion_auc"])
    assert float(g["insertion_auc"]) > float(b["insertion_auc"])
    # the curve of `good` by hand: p = sigmoid(10 * pixels left), t = 0, 1/4, ..., 1
    p = torch.sigmoid(torch.tensor([20.0, 10.0, 0.0, 0.0, 0.0]))
    assert abs(float(g["deletion_auc"]) - float(torch.trapezoid(p, dx=0.25))) < 1e-6


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(normalize):
    model, (x, y) = _model(), _data()
    attr = saliency(model, x, y)
    pert = 0.1 * torch.randn(6, *x.shape, generator=torch.Generator().manual_seed(3))
    ours = infidelity(model, x, attr, y, perturbations=pert, normalize=normalize)
    order = pert.transpose(0, 1).reshape(-1, *x.shape[1:])   # Captum expands image-major: image i's draws together

    def perturb(inputs):
        return order, inputs - order

    ref = captum_metrics.infidelity(model, perturb, x, attr, target=y, n_perturb_samples=6, normalize=normalize)
    assert torch.allclose(ours, ref.double(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ stability
def test_max_sensitivity_matches_captum():
    model, (x, y) = _model(), _data()
    pert = uniform_perturbations(x, radius=0.05, samples=5, generator=torch.Generator().manual_seed(4))
    ours = stability(model, x, y, "SM", perturbations=pert)
    order = pert.transpose(0, 1).reshape(-1, *x.shape[1:])

    def perturb(inputs, perturb_radius=0.05):
        if isinstance(inputs, tuple):
            return tuple(i + order for i in inputs)
        return inputs + order

    def explain(inputs, target=None):
        if isinstance(inputs, tuple):
            return tuple(saliency(model, i, target) for i in inputs)
        return saliency(model, inputs, target)

    ref = captum_metrics.sensitivity_max(explain, x, perturb_func=perturb, n_perturb_samples=5, target=y)
    assert torch.allclose(ours["max_sensitivity"], ref.double(), rtol=1e-4, atol=1e-6)
    assert bool((ours["avg_sensitivity"] <= ours["max_sensitivity"] + 1e-12).all())


def test_ris_ros_rrs_by_definition():
    """One draw, recomputed from Agarwal et al.'s formulas; a draw that changes the class is excluded."""
    from smoothgeo.core.stability import EPS, EPS_MIN

    model, (x, y) = _model(), _data(n=3)
    pert = uniform_perturbations(x, radius=0.05, samples=1, generator=torch.Generator().manual_seed(5))
    out = stability(model, x, y, "SM", perturbations=pert)
    z = x + pert[0]
    e_x, e_z = saliency(model, x, y), saliency(model, z, y)
    rel = lambda a, b: ((a - b) / (a + EPS)).flatten(1).double().norm(dim=1)  # noqa: E731
    with torch.no_grad():
        f_x, f_z = model(x), model(z)
        l_x, l_z = model[:-1](x), model[:-1](z)
    keep = f_x.argmax(1) == f_z.argmax(1)
    for name, den in (("ris", rel(x, z)), ("ros", rel(f_x, f_z)), ("rrs", rel(l_x, l_z))):
        want = rel(e_x, e_z) / den.clamp_min(EPS_MIN)
        assert torch.allclose(out[name][keep], want[keep], rtol=1e-5)
        assert torch.isnan(out[name][~keep]).all()


# ------------------------------------------------------------------------------------------ robust accuracy
def test_robust_correct_is_monotone_and_zero_radius_is_clean_accuracy():
    model, (x, y) = _model(), _data(n=40)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert torch.equal(robust_correct(model, x, y, epsilon=0.0), clean)
    small = robust_correct(model, x, y, epsilon=0.02, generator=torch.Generator().manual_seed(0))
    big = robust_correct(model, x, y, epsilon=0.5, generator=torch.Generator().manual_seed(0))
    assert bool((small <= clean).all()) and int(big.sum()) <= int(small.sum())
    assert int(big.sum()) < int(clean.sum())   # PGD at a large radius does break predictions
