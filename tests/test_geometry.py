import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothgeo.core.lipschitz import gradient_lipschitz
from smoothgeo.core.hessian import (ce_hessian_lambda_max, hessian_max_eig, is_piecewise_linear,
                                   logit_jacobian)
from smoothgeo.core.models import MLP, FashionCNN, ResNet20, softplus_copy


def _full_hessian_max_eig(model, x, y):
    """Reference: the largest eigenvalue of the full d x d input Hessian of CE, one image at a time."""
    out = []
    for i in range(x.shape[0]):
        h = torch.autograd.functional.hessian(lambda xi: F.cross_entropy(model(xi[None]), y[i:i + 1]), x[i])
        d = x[i].numel()
        out.append(torch.linalg.eigvalsh(h.reshape(d, d))[-1])
    return torch.stack(out)


def _tiny_conv():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 5))


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP(in_features=6, hidden=(16, 16), num_classes=4).double().eval()


def test_exact_route_equals_full_hessian_on_relu_mlp(mlp):
    x = torch.rand(5, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    exact = hessian_max_eig(mlp, x, y, method="exact")
    torch.testing.assert_close(exact, _full_hessian_max_eig(mlp, x, y), rtol=1e-8, atol=1e-12)
    assert (exact > 0).all()


def test_known_answer_uses_probabilities_not_logits():
    # logits = x (J = I, C = d = 2): H = diag(p) - p p^T, lambda_max = 2 p1 p2 (= 0.5 at p = (1/2, 1/2))
    logits = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    jac = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
    p = logits.softmax(1)
    torch.testing.assert_close(ce_hessian_lambda_max(logits, jac), 2 * p[:, 0] * p[:, 1])


@pytest.mark.parametrize("make", [lambda: MLP(in_features=18, hidden=(12,), num_classes=5), _tiny_conv])
def test_power_iteration_agrees_with_exact(make):
    torch.manual_seed(1)
    model = make().double().eval()
    x = torch.rand(4, 2, 3, 3, dtype=torch.float64) if isinstance(model, nn.Sequential) else \
        torch.rand(4, 18, dtype=torch.float64)
    if isinstance(model, nn.Sequential):
        x = torch.rand(4, 2, 6, 6, dtype=torch.float64)
    exact = hessian_max_eig(model, x, method="exact")
    power = hessian_max_eig(model, x, method="power", iters=2000, tol=1e-12)
    torch.testing.assert_close(power, exact, rtol=1e-4, atol=1e-10)
    assert torch.equal(hessian_max_eig(model, x), exact)  # auto picks exact for ReLU / max-pool / linear


def test_power_iteration_on_smooth_model_matches_full_hessian():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()
    x = torch.rand(6, 5, dtype=torch.float64) * 4 - 2
    y = torch.randint(0, 3, (6,))
    assert not is_piecewise_linear(model)
    power = hessian_max_eig(model, x, y, iters=3000, tol=1e-13)  # auto -> power
    torch.testing.assert_close(power, _full_hessian_max_eig(model, x, y), rtol=1e-4, atol=1e-8)


def test_piecewise_linear_detection_and_mode_restored():
    assert is_piecewise_linear(FashionCNN()) and is_piecewise_linear(ResNet20().eval())
    assert not is_piecewise_linear(ResNet20().train())  # batch statistics are not piecewise linear
    assert not is_piecewise_linear(softplus_copy(FashionCNN(), 10.0))
    model = MLP(in_features=4, num_classes=3).train()
    hessian_max_eig(model, torch.rand(2, 4))
    assert model.training


def test_near_one_hot_is_finite_and_differentiable():
    logits = torch.tensor([[80.0, 0.0, -5.0], [40.0, 39.0, -300.0]], requires_grad=True)
    jac = torch.randn(2, 3, 1, 4, 4, requires_grad=True)
    lam = ce_hessian_lambda_max(logits, jac)
    assert torch.isfinite(lam).all() and (lam >= 0).all() and lam[0] < 1e-20
    lam.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(jac.grad).all()
    avg = ce_hessian_lambda_max(logits, jac, average_channels=True)
    assert torch.isfinite(avg).all()


def test_logit_jacobian_rows_match_autograd():
    torch.manual_seed(3)
    model = _tiny_conv().double()
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    logits, jac = logit_jacobian(model, x)
    ref = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x[1])
    torch.testing.assert_close(jac[1], ref)
    assert logits.shape == (3, 5) and jac.shape == (3, 5, 2, 6, 6)


class _Quadratic(nn.Module):
    """logit_0 = 0.5 * sum_i a_i x_i^2, logit_1 = 0: grad of logit 0 is a * x, so the ratio lies in [min a, max a]."""

    def __init__(self, a):
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, x):
        q = 0.5 * (self.a * x.flatten(1) ** 2).sum(1)
        return torch.stack([q, torch.zeros_like(q)], 1)


@pytest.mark.parametrize("neighbours", ["random", "adversarial"])
def test_gradient_lipschitz_linear_is_zero_and_quadratic_is_bounded(neighbours):
    torch.manual_seed(4)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    ratio = gradient_lipschitz(linear, x, epsilon=0.1, samples=4, neighbours=neighbours, steps=3)
    assert ratio.shape == (3,) and torch.all(ratio.abs() < 1e-12)
    a = torch.linspace(0.5, 2.0, 16, dtype=torch.float64)
    quad = _Quadratic(a)
    ratio = gradient_lipschitz(quad, x, 0, epsilon=0.1, samples=4, neighbours=neighbours, steps=3)
    assert torch.all(ratio >= 0.5 - 1e-9) and torch.all(ratio <= 2.0 + 1e-9)


def test_gradient_lipschitz_relu_adversarial_at_least_random_start():
    torch.manual_seed(5)
    model = _tiny_conv().eval()
    x = torch.rand(4, 2, 6, 6)
    rnd = gradient_lipschitz(model, x, epsilon=0.1, samples=3, seed=7)
    adv = gradient_lipschitz(model, x, epsilon=0.1, samples=3, neighbours="adversarial", steps=4, seed=7)
    # same seed -> same random starts, and the adversarial estimate keeps the best iterate including its start
    assert torch.all(adv >= rnd - 1e-6) and torch.isfinite(adv).all()
    with pytest.raises(ValueError, match="neighbours"):
        gradient_lipschitz(model, x, epsilon=0.1, neighbours="nearest")


def test_power_iteration_finds_largest_algebraic_eigenvalue_when_dominant_is_negative():
    # CE(z, y=0) with z = (0.5 ||x||^2, 0): H = -(1 - p0) I + p0 (1 - p0) x x^T, so
    # lambda_max = (1 - p0)(p0 ||x||^2 - 1) < 0 while the dominant eigenvalue is -(1 - p0) (multiplicity d - 1)
    x = 0.2 * torch.rand(3, 1, 4, 4, dtype=torch.float64)
    model = _Quadratic(torch.ones(16, dtype=torch.float64))
    sq = x.flatten(1).pow(2).sum(1)
    p0 = torch.sigmoid(0.5 * sq)
    expected = (1 - p0) * (p0 * sq - 1)
    assert (expected < 0).all()
    got = hessian_max_eig(model, x, 0, method="power", iters=3000, tol=1e-13)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_gradient_lipschitz_chunked_equals_unchunked():
    torch.manual_seed(6)
    model = _tiny_conv().double()
    x = torch.rand(5, 2, 6, 6, dtype=torch.float64)
    kw = dict(epsilon=0.1, samples=3, neighbours="adversarial", steps=2, seed=1)
    torch.testing.assert_close(gradient_lipschitz(model, x, **kw), gradient_lipschitz(model, x, chunk_size=2, **kw))


@pytest.mark.parametrize("average_channels", [False, True])
def test_lambda_max_penalty_value_and_weight_gradient_match_eigvalsh_route(average_channels):
    from smoothgeo.core.hessian import lambda_max_penalty

    torch.manual_seed(7)
    model = _tiny_conv().double()
    x = torch.rand(4, 2, 6, 6, dtype=torch.float64)
    params = list(model.parameters())
    logits, jac = logit_jacobian(model, x, create_graph=True)  # reference: differentiate eigvalsh
    ref = ce_hessian_lambda_max(logits, jac, average_channels=average_channels)
    ref_grads = torch.autograd.grad(ref.mean(), params)
    logits2, lam = lambda_max_penalty(model, x, average_channels=average_channels)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(lam, ref, rtol=1e-10, atol=1e-14)
    for a, b in zip(torch.autograd.grad(lam.mean(), params), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def _merged_reference(model, x, m, average_channels=False):
    """lambda_max of the merged-class Hessian J^T B^T B J from its definition (eigvalsh through a create_graph
    Jacobian; B's rows sqrt(p_k)(e_k - p) for the m most probable classes and sqrt(q)(p_rest / q - p)), and the
    bound sum_{c not in S} p_c ||g_c - r||^2 on its shortfall."""
    logits, jac = logit_jacobian(model, x, create_graph=True)
    if average_channels:
        jac = jac.mean(2)
    p = logits.softmax(1)
    order = p.argsort(1, descending=True)[:, :m]
    kept = torch.zeros_like(p, dtype=torch.bool).scatter(1, order, True)
    rest = p.masked_fill(kept, 0.0)
    q = rest.sum(1, keepdim=True)
    eye = torch.eye(p.shape[1], dtype=p.dtype)
    rows = [p.gather(1, order[:, k:k + 1]).sqrt() * (eye[order[:, k]] - p) for k in range(m)]
    rows.append(q.sqrt() * (rest / q - p))
    b = torch.stack(rows, 1)                                              # (N, m + 1, C)
    bj = b @ jac.flatten(2)
    lam = torch.linalg.eigvalsh(bj @ bj.transpose(1, 2))[:, -1]
    g = jac.flatten(2)
    r = (rest.unsqueeze(2) * g).sum(1, keepdim=True) / q.unsqueeze(2)
    bound = (rest * (g - r).pow(2).sum(2)).sum(1)
    return lam, bound


@pytest.mark.parametrize("average_channels", [False, True])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_merged_class_penalty_matches_its_definition_and_bound(m, average_channels):
    from smoothgeo.core.hessian import lambda_max_penalty

    torch.manual_seed(8)
    model = _tiny_conv().double()
    x = 3 * torch.rand(6, 2, 6, 6, dtype=torch.float64)
    params = list(model.parameters())
    ref, bound = _merged_reference(model, x, m, average_channels)
    ref_grads = torch.autograd.grad(ref.mean(), params)
    _, lam = lambda_max_penalty(model, x, average_channels=average_channels, top_classes=m)
    torch.testing.assert_close(lam, ref, rtol=1e-10, atol=1e-14)
    for a, b in zip(torch.autograd.grad(lam.mean(), params), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    _, exact = lambda_max_penalty(model, x, average_channels=average_channels)
    shortfall = (exact - lam).detach()
    assert (shortfall >= -1e-12).all() and (shortfall <= bound.detach() + 1e-12).all()
    assert (shortfall > 1e-9).any()  # a real approximation on this model, not the exact value by accident


@pytest.mark.parametrize("average_channels", [False, True])
def test_merged_class_penalty_with_one_class_left_out_is_exact(average_channels):
    """m = C - 1 merges a single class: the exact value and weight gradient."""
    from smoothgeo.core.hessian import lambda_max_penalty

    torch.manual_seed(9)
    model = _tiny_conv().double()
    x = 3 * torch.rand(4, 2, 6, 6, dtype=torch.float64)
    params = list(model.parameters())
    _, exact = lambda_max_penalty(model, x, average_channels=average_channels)
    _, merged = lambda_max_penalty(model, x, average_channels=average_channels, top_classes=4)
    torch.testing.assert_close(merged, exact, rtol=1e-10, atol=1e-14)
    for a, b in zip(torch.autograd.grad(merged.mean(), params), torch.autograd.grad(exact.mean(), params)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    _, same = lambda_max_penalty(model, x, average_channels=average_channels, top_classes=5)  # m >= C: exact
    torch.testing.assert_close(same, exact, rtol=0, atol=0)


def test_merged_class_penalty_is_finite_for_one_hot_probabilities():
    from smoothgeo.core.hessian import lambda_max_penalty

    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([2000.0, 0.0, -5.0, 1.0]))  # p one-hot in float32 and float64
    x = torch.rand(3, 4)
    for m in (0, 1, 2):  # 0: the exact route (sqrt(p) at p = 0 once gave NaN weight gradients)
        _, lam = lambda_max_penalty(model, x, top_classes=m)
        grads = torch.autograd.grad(lam.sum(), list(model.parameters()), allow_unused=True)
        assert torch.isfinite(lam).all() and (lam.abs() < 1e-6).all()
        assert all(g is None or torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="top_classes"):
        lambda_max_penalty(model, x, top_classes=-1)
    for m in (0, 1, 2):
        with pytest.raises(ValueError, match="average_channels needs image"):
            lambda_max_penalty(model, x, top_classes=m, average_channels=True)


@pytest.mark.parametrize("average_channels", [False, True])
def test_ritz_penalty_is_a_lower_bound_and_exact_with_enough_vectors(average_channels):
    from smoothgeo.core.hessian import lambda_max_penalty

    torch.manual_seed(11)
    model = _tiny_conv().double()  # 5 classes, last layer Linear(36, 5) after a ReLU + max-pool
    x = 3 * torch.rand(6, 2, 6, 6, dtype=torch.float64)
    params = list(model.parameters())
    _, exact = lambda_max_penalty(model, x, average_channels=average_channels)
    exact_grads = torch.autograd.grad(exact.mean(), params)
    for k in (4, 5):  # M u = 0 (u = sqrt p): C - 1 proxy eigenvectors already span M's range
        _, lam = lambda_max_penalty(model, x, average_channels=average_channels, ritz_vectors=k)
        torch.testing.assert_close(lam, exact, rtol=1e-9, atol=1e-14)
        for a, b in zip(torch.autograd.grad(lam.mean(), params), exact_grads):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)
    for k in (1, 2, 3):
        _, lam = lambda_max_penalty(model, x, average_channels=average_channels, ritz_vectors=k)
        assert (lam.detach() <= exact.detach() * (1 + 1e-10)).all() and (lam.detach() > 0).all()
        grads = torch.autograd.grad(lam.mean(), params)
        assert all(torch.isfinite(g).all() for g in grads) and grads[0].abs().sum() > 0


def test_ritz_penalty_without_a_final_linear_layer_uses_the_identity_proxy():
    from smoothgeo.core.hessian import lambda_max_penalty

    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 12), nn.MaxPool1d(3)).double()  # 4 classes
    x = torch.rand(5, 6, dtype=torch.float64)
    _, exact = lambda_max_penalty(model, x)
    _, lam3 = lambda_max_penalty(model, x, ritz_vectors=3)
    torch.testing.assert_close(lam3, exact, rtol=1e-9, atol=1e-14)
    _, lam1 = lambda_max_penalty(model, x, ritz_vectors=1)
    assert torch.isfinite(lam1).all() and (lam1.detach() <= exact.detach() * (1 + 1e-10)).all()
    with pytest.raises(ValueError, match="not both"):
        lambda_max_penalty(model, x, top_classes=2, ritz_vectors=2)
