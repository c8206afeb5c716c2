"""Attributions against known answers and an independent (finite-difference, one-image-at-a-time) implementation."""
import pytest
import torch
from torch import nn

from smoothgeo.core.attributions import (
    METHODS, attribute, attribution_map, integrated_gradients, make_generator, map_of, saliency, smoothgrad,
    uniform_gradient, uniform_sampler, gaussian_sampler,
)
from smoothgeo.core.models import FashionCNN, MLP, softplus_copy

torch.set_default_dtype(torch.float32)


def linear_model(d=16, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, c))


def smooth_net(seed=0, d=16, c=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 12), nn.Softplus(beta=2.0), nn.Linear(12, 8), nn.Tanh(),
                         nn.Linear(8, c)).double()


class Ignore(nn.Module):
    """Zeroes one pixel before the network, so the model ignores it."""

    def __init__(self, net, pixel):
        super().__init__()
        self.net, self.pixel = net, pixel

    def forward(self, x):
        mask = torch.ones_like(x)
        mask[..., self.pixel[0], self.pixel[1]] = 0
        return self.net(x * mask)


def fd_gradient(f, x, c, h=1e-5):
    """Central finite differences of f(x)[c] for a single image x (float64)."""
    g = torch.zeros_like(x)
    flat = g.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        with torch.no_grad():
            flat[i] = (f((x + e)[None])[0, c] - f((x - e)[None])[0, c]) / (2 * h)
    return g


def test_saliency_of_linear_model_is_weight_row():
    model = linear_model()
    x = torch.rand(5, 1, 4, 4)
    target = torch.tensor([0, 1, 2, 1, 0])
    attr = saliency(model, x, target)
    expected = model[1].weight[target].view(5, 1, 4, 4)
    torch.testing.assert_close(attr, expected)


def test_ig_on_linear_model_is_exact():
    model = linear_model()
    x = torch.rand(3, 1, 4, 4)
    target = torch.tensor([2, 0, 1])
    attr = integrated_gradients(model, x, target, steps=7)
    torch.testing.assert_close(attr, x * model[1].weight[target].view(3, 1, 4, 4))
    with torch.no_grad():
        delta = model(x).gather(1, target[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(attr.flatten(1).sum(1), delta)


def test_ig_completeness_on_smooth_model():
    model = smooth_net()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3])
    baseline = torch.full_like(x, 0.2)
    attr = integrated_gradients(model, x, target, baseline=baseline, steps=400)
    with torch.no_grad():
        fx = model(x).gather(1, target[:, None])[:, 0]
        f0 = model(baseline).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(attr.flatten(1).sum(1), fx - f0, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_ignored_pixel_gets_zero_attribution(method):
    torch.manual_seed(1)
    model = Ignore(MLP(in_features=16, hidden=(10,), num_classes=3), (1, 2))
    x = torch.rand(4, 1, 4, 4)
    attr = attribute(method, model, x, None, generator=make_generator("cpu", 0), **(
        {"samples": 8} if method in ("SG", "UG") else {}))
    assert attr.shape == x.shape
    assert torch.all(attr[..., 1, 2] == 0)
    assert attr.abs().sum() > 0


def test_saliency_matches_finite_differences_on_random_net():
    model = smooth_net(seed=3)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    target = torch.tensor([1, 3, 0])
    attr = saliency(model, x, target)
    for i in range(3):
        torch.testing.assert_close(attr[i], fd_gradient(model, x[i], int(target[i])), atol=1e-7, rtol=1e-5)


def test_ig_matches_one_image_reference_on_random_net():
    model = smooth_net(seed=4)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    target = torch.tensor([2, 1])
    m = 10
    attr = integrated_gradients(model, x, target, steps=m)
    for i in range(2):
        ref = sum(fd_gradient(model, x[i] * k / m, int(target[i])) for k in range(1, m + 1)) / m * x[i]
        torch.testing.assert_close(attr[i], ref, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("method,sampler", [("SG", gaussian_sampler(0.3)), ("UG", uniform_sampler(0.2))])
def test_smoothing_matches_one_image_reference(method, sampler):
    model = smooth_net(seed=5)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 3])
    n = 6
    opts = {"noise_level": 0.3} if method == "SG" else {"radius": 0.2}
    attr = attribute(method, model, x, target, generator=make_generator("cpu", 7), samples=n, **opts)
    noise = sampler(x, n, make_generator("cpu", 7))  # the same draws, then an independent gradient
    for i in range(2):
        ref = sum(fd_gradient(model, x[i] + noise[j, i], int(target[i])) for j in range(n)) / n
        torch.testing.assert_close(attr[i], ref, atol=1e-7, rtol=1e-5)


def test_smoothgrad_sigma_is_fraction_of_image_range():
    x = torch.zeros(2, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0          # range 1
    x[1, 0, 0, 0] = 0.5          # range 0.5
    noise = gaussian_sampler(0.2)(x, 4000, make_generator("cpu", 0))
    std = noise.transpose(0, 1).flatten(1).std(1)
    torch.testing.assert_close(std, torch.tensor([0.2, 0.1]), atol=3e-3, rtol=0)
    u = uniform_sampler(0.3)(x, 100, make_generator("cpu", 0))
    assert u.abs().max() <= 0.3 and u.abs().max() > 0.29


def test_uniform_noise_has_the_moments_of_u_minus_r_r():
    """U[-r, r]: mean 0, variance r^2 / 3, symmetric (a one-sided U[0, r] or a U[-r/2, r/2] fails)."""
    r = 0.3
    x = torch.rand(2, 1, 8, 8)
    u = uniform_sampler(r)(x, 400, make_generator("cpu", 1)).flatten().double()   # 51200 draws
    assert abs(u.mean().item()) < 0.005
    assert u.var().item() == pytest.approx(r ** 2 / 3, rel=0.03)
    assert u.min().item() < -0.99 * r and u.max().item() > 0.99 * r and u.abs().max().item() <= r
    assert (u < 0).double().mean().item() == pytest.approx(0.5, abs=0.01)
    assert (u < -r / 2).double().mean().item() == pytest.approx(0.25, abs=0.01)   # flat, not peaked
    assert u.pow(3).mean().item() == pytest.approx(0.0, abs=2e-4)               # no skew


class _Cubic(nn.Module):
    """logit 0 = sum_i x_i^3 / 3, logit 1 = 0: the gradient of logit 0 is x^2, so its mean over x + z is
    x^2 + Var(z) per pixel (z with mean 0): r^2 / 3 for U[-r, r], sigma^2 for SmoothGrad."""

    def forward(self, x):
        c = x.flatten(1).pow(3).sum(1) / 3
        return torch.stack([c, torch.zeros_like(c)], 1)


def test_smoothing_of_a_cubic_adds_the_noise_variance():
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1.0], dtype=torch.float64)   # image ranges 1 (sigma = noise_level)
    x[:, 0, 0, 1] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    model, n = _Cubic(), 4000
    ug = uniform_gradient(model, x, 0, radius=0.2, samples=n, generator=make_generator("cpu", 2))
    torch.testing.assert_close(ug, x ** 2 + 0.2 ** 2 / 3, atol=0.01, rtol=0)
    assert abs((ug - x ** 2).mean().item() - 0.2 ** 2 / 3) < 1e-3
    sg = smoothgrad(model, x, 0, noise_level=0.2, samples=n, generator=make_generator("cpu", 2))
    assert abs((sg - x ** 2).mean().item() - 0.2 ** 2) < 1.5e-3


def test_smoothgrad_tends_to_saliency_as_sigma_vanishes():
    model = smooth_net(seed=6).float()
    x = torch.rand(3, 1, 4, 4)
    target = torch.tensor([0, 1, 2])
    sm = saliency(model, x, target)
    sg = smoothgrad(model, x, target, noise_level=1e-6, samples=5, generator=make_generator("cpu", 0))
    torch.testing.assert_close(sg, sm, atol=1e-5, rtol=1e-4)
    ug0 = uniform_gradient(model, x, target, radius=0.0, samples=3, generator=make_generator("cpu", 0))
    torch.testing.assert_close(ug0, sm)


@pytest.mark.parametrize("method,opts", [
    ("IG", {"steps": 13}), ("SG", {"samples": 9, "noise_level": 0.2}), ("UG", {"samples": 9, "radius": 0.1})])
def test_chunked_equals_unchunked(method, opts):
    torch.manual_seed(0)
    model = FashionCNN().eval()
    x = torch.rand(3, 1, 28, 28)
    full = attribute(method, model, x, None, generator=make_generator("cpu", 11), **opts)
    chunked = attribute(method, model, x, None, generator=make_generator("cpu", 11), chunk_size=4, **opts)
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-5)


def test_random_methods_reproducible_with_generator():
    torch.manual_seed(0)
    model = FashionCNN().eval()
    x = torch.rand(2, 1, 28, 28)
    a = smoothgrad(model, x, None, samples=4, generator=make_generator("cpu", 3))
    b = smoothgrad(model, x, None, samples=4, generator=make_generator("cpu", 3))
    c = smoothgrad(model, x, None, samples=4, generator=make_generator("cpu", 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_create_graph_lets_attacks_differentiate_the_map(method):
    torch.manual_seed(0)
    model = softplus_copy(FashionCNN().eval(), beta=10.0)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    opts = {"samples": 3} if method in ("SG", "UG") else ({"steps": 4} if method == "IG" else {})
    attr = attribute(method, model, x, torch.tensor([1, 2]), generator=make_generator("cpu", 0),
                     create_graph=True, **opts)
    m = map_of(method, attr, x)
    (grad,) = torch.autograd.grad(m[:, :10, :10].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_attribution_map_normalisation_and_conventions():
    attr = torch.randn(2, 3, 5, 6)
    x = torch.rand(2, 3, 5, 6)
    m = attribution_map(attr, x)
    assert m.shape == (2, 5, 6) and (m >= 0).all()
    torch.testing.assert_close(m.sum((1, 2)), torch.full((2,), 30.0))
    expected = (attr * x).abs().sum(1)
    torch.testing.assert_close(m, expected * 30 / expected.sum((1, 2), keepdim=True))
    torch.testing.assert_close(map_of("IG", attr, x), attribution_map(attr, times_input=False))
    torch.testing.assert_close(map_of("SM", attr, x, convention="abs"), attribution_map(attr, times_input=False))
    assert torch.equal(attribution_map(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3)), torch.zeros(1, 3, 3))


def test_bad_arguments_raise_clear_errors():
    model = linear_model()
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="noise_level must be >= 0"):
        smoothgrad(model, x, None, noise_level=-0.1)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        uniform_gradient(model, x, None, radius=-1)
    with pytest.raises(ValueError, match="IG steps must be >= 1"):
        integrated_gradients(model, x, None, steps=0)
    with pytest.raises(ValueError, match="target has 3 entries"):
        saliency(model, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="unknown attribution method 'XX'"):
        attribute("XX", model, x)
    with pytest.raises(ValueError, match=r"expects \(N, C, H, W\)"):
        attribution_map(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="unknown map convention"):
        map_of("SM", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), convention="raw")
    with pytest.raises(ValueError, match="batched tensor"):
        saliency(model, torch.zeros(16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_attributions_follow_the_gpu_device():
    model = FashionCNN().cuda().eval()
    x = torch.rand(2, 1, 28, 28, device="cuda")
    for method in METHODS:
        attr = attribute(method, model, x, None, generator=make_generator("cuda", 0))
        assert attr.device == x.device
