"""Each training recipe's loss value against its formula, at settings where a wrong weight or a wrong point would
show (issue "Tests that fail when the science is wrong"): SSR with alpha and scale other than 1, Madry at the
PGD point and never below the clean CE, IG-NORM = CE + lambda * ||IG||_1 at its PGD point."""
import torch
import torch.nn.functional as F
from torch import nn

from smoothgeo.core.hessian import exact_hessian_max_eig
from smoothgeo.core.threat import pgd_linf
from smoothgeo.training.recipes import ig_norm_loss, ig_of_loss, madry_loss, ssr_loss


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).double()


def _data(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def test_ssr_loss_weights_ce_and_penalty_as_the_paper():
    """(1 - alpha) CE + alpha * scale * mean lambda_max: swapping the weights (alpha CE + (1 - alpha) ...) or
    dropping the scale changes the value at alpha 0.3, scale 7."""
    model, (x, y) = _model(), _data()
    loss, info = ssr_loss(model, x, y, alpha=0.3, scale=7.0)
    ce = F.cross_entropy(model(x), y)
    lam = exact_hessian_max_eig(model, x).mean()
    want = 0.7 * ce + 0.3 * 7.0 * lam
    assert float(lam) > 1e-3          # the penalty is not negligible, so a wrong weight shows
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-6, atol=1e-9)
    swapped = 0.3 * ce + 0.7 * 7.0 * lam
    assert abs(float(loss - swapped)) > 1e-3
    assert abs(info["lambda_max"] - float(lam)) < 1e-6


def test_madry_loss_is_ce_at_the_pgd_point_and_not_below_clean_ce():
    model, (x, y) = _model(), _data()
    torch.manual_seed(5)
    loss, _ = madry_loss(model, x, y, epsilon=0.1, step_size=0.03, steps=5)
    torch.manual_seed(5)   # the same random start
    xa = pgd_linf(model, x, lambda m, z: F.cross_entropy(m(z), y, reduction="none"), epsilon=0.1,
                  step_size=0.03, steps=5)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(model(xa), y).detach())
    clean = F.cross_entropy(model(x), y)
    assert float(loss) > float(clean) + 1e-4     # trained on the attacked point, not on the clean images
    assert float((xa - x).abs().max()) <= 0.1 + 1e-12


def test_ig_norm_loss_is_ce_plus_lambda_times_ig_norm_at_its_pgd_point():
    model, (x, y) = _model(), _data()
    lam = 2.5

    def objective(m, z):
        return ig_of_loss(m, x, z, y, steps=4, create_graph=True).abs().flatten(1).sum(1)

    torch.manual_seed(9)
    loss, info = ig_norm_loss(model, x, y, epsilon=0.1, lam=lam, ig_steps=4, steps=3, step_size=0.05)
    torch.manual_seed(9)
    xa = pgd_linf(model, x, objective, epsilon=0.1, step_size=0.05, steps=3)
    ce = F.cross_entropy(model(x), y)
    ig = ig_of_loss(model, x, xa, y, steps=4).abs().flatten(1).sum(1).mean()
    torch.testing.assert_close(loss.detach(), (ce + lam * ig).detach(), rtol=1e-6, atol=1e-9)
    assert float(ig) > 1e-4 and abs(info["ig_norm"] - float(ig)) < 1e-6


# --------------------------------------------------------------------------------- boundaries (same issue)
def test_batchnorm_checkpoint_saved_in_train_mode_loads_in_eval_mode(tmp_path):
    """A ResNet-20 (BatchNorm) saved while in train mode loads in eval mode, with the eval outputs of the saved
    model; a loader that forgot ``.eval()`` would return batch-statistics outputs, which differ."""
    from smoothgeo.core.models import build_model
    from smoothgeo.store.checkpoints import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).train()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32) * 2)      # running statistics move away from their initial values
    save_checkpoint(tmp_path / "bn.pt", model, arch="resnet20", num_classes=10)
    loaded, _ = load_checkpoint(tmp_path / "bn.pt")
    assert not loaded.training and not any(m.training for m in loaded.modules())
    with torch.no_grad():
        want = model.eval()(x)
        got = loaded(x)
        batch_stats = model.train()(x)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, batch_stats, atol=1e-4)


def test_verdict_rule_at_its_boundaries():
    from smoothgeo.analysis.claims import verdict

    assert verdict(0.01, 0.2, 0.0499) == "reproduces"
    assert verdict(0.01, 0.2, 0.05) == "not shown"          # p must be below alpha, not at it
    assert verdict(0.0, 0.2, 0.001) == "not shown"          # an interval touching 0 does not exclude it
    assert verdict(-0.2, 0.0, 0.001) == "not shown"
    assert verdict(-0.2, -0.01, 0.0499) == "contradicted"   # the same strictness in the other direction
    assert verdict(-0.2, -0.01, 0.05) == "not shown"
    assert verdict(float("nan"), 0.2, 0.001) == "not shown"
