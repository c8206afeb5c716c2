import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
import yaml
from torch.utils.data import DataLoader, TensorDataset

import smoothgeo
from smoothgeo.store import checkpoints as ckpt
from smoothgeo.store.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from smoothgeo.core.hessian import hessian_max_eig
from smoothgeo.core.models import MLP
from smoothgeo.pipeline.train import RECORD_KEYS, main, resolve_config
from smoothgeo.training.recipes import (OPTIONS, RECIPES, RITZ_VECTORS, TOP_CLASSES, check_options, fit, ig_of_loss, pgd_linf, ssr_loss,
                                weight_decay_loss)


def _toy(n=64, seed=0):
    """Images (n, 1, 4, 4) in [0, 1]; label = which third of the image is brightest (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = torch.stack([x[:, 0, :, :1].mean((1, 2)), x[:, 0, :, 1:3].mean((1, 2)), x[:, 0, :, 3:].mean((1, 2))],
                    1).argmax(1)
    return x, y


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(in_features=16, hidden=(32,), num_classes=3)


FAST = {"madry": {"steps": 2}, "ig_norm": {"steps": 2, "ig_steps": 4, "lam": 0.1}, "ssr": {"alpha": 0.3}}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_lowers_its_loss(recipe):
    x, y = _toy()
    model = _mlp()
    options = FAST.get(recipe, {})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_value():
        torch.manual_seed(0)  # the same random starts before and after
        return RECIPES[recipe](model, x, y, **options)[0].item()

    before = loss_value()
    for _ in range(15):
        loss, logs = RECIPES[recipe](model, x, y, **options)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert all(isinstance(v, float) for v in logs.values())
    assert loss_value() < before


def test_ssr_penalty_matches_geometry_and_has_weight_gradient():
    x, y = _toy(8)
    model = _mlp().double()
    x = x.double()
    loss, logs = ssr_loss(model, x, y, alpha=1.0, scale=1.0)  # pure penalty
    assert logs["lambda_max"] == pytest.approx(hessian_max_eig(model, x, method="exact").mean().item(), rel=1e-10)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert grads[0].abs().sum() > 0  # the first layer's weights receive gradient through the Jacobian


def test_ssr_merged_class_route_is_close_to_exact_and_never_above():
    x, y = _toy(16)
    model = _mlp().double()
    x = x.double()
    n_classes = model(x[:1]).shape[1]
    params = list(model.parameters())
    exact, logs = ssr_loss(model, x, y, alpha=1.0, scale=1.0, top_classes=0)
    assert logs["lambda_max"] == pytest.approx(hessian_max_eig(model, x, method="exact").mean().item(), rel=1e-10)
    merged, logs_m = ssr_loss(model, x, y, alpha=1.0, scale=1.0, top_classes=n_classes - 1)  # one class merged
    assert logs_m["lambda_max"] == pytest.approx(logs["lambda_max"], rel=1e-10)
    for a, b in zip(torch.autograd.grad(merged, params), torch.autograd.grad(exact, params)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    for m in range(1, n_classes - 1):  # a real approximation: below the exact value, not equal to it
        _, logs_m = ssr_loss(model, x, y, alpha=1.0, scale=1.0, top_classes=m)
        assert logs_m["lambda_max"] < logs["lambda_max"] * (1 - 1e-6)
        _, logs_k = ssr_loss(model, x, y, alpha=1.0, scale=1.0, ritz_vectors=m)
        assert logs_k["lambda_max"] < logs["lambda_max"] * (1 - 1e-6)
    ritz, logs_k = ssr_loss(model, x, y, alpha=1.0, scale=1.0, ritz_vectors=n_classes - 1)
    assert logs_k["lambda_max"] == pytest.approx(logs["lambda_max"], rel=1e-9)


def test_weight_decay_is_an_explicit_l2_penalty_on_kernels():
    x, y = _toy(8)
    model = _mlp()
    loss, logs = weight_decay_loss(model, x, y, weight_decay=0.1)
    kernels = sum(p.pow(2).sum() for p in model.parameters() if p.dim() >= 2)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item() + 0.05 * kernels.item(), rel=1e-6)


def test_pgd_stays_in_ball_and_box():
    x, y = _toy(16)
    x[:4] = 0.0  # at the box edge
    model = _mlp()

    def ce(m, z):
        return F.cross_entropy(m(z), y, reduction="none")

    def ig(m, z):
        return ig_of_loss(m, x, z, y, steps=3, create_graph=True).abs().flatten(1).sum(1)

    for objective in (ce, ig):
        xa = pgd_linf(model, x, objective, epsilon=0.1, step_size=0.04, steps=5)
        assert (xa - x).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
        assert not xa.requires_grad
    xa = pgd_linf(model, x, ce, epsilon=0.1, step_size=0.04, steps=5, random_start=False)
    assert ce(model, xa).mean() > ce(model, x).mean()


def test_ig_of_loss_is_complete():
    x, y = _toy(4)
    model = _mlp().double()
    x = x.double()
    x_end = (x + 0.05).clamp(0, 1)
    attribution = ig_of_loss(model, x, x_end, y, steps=400)
    gap = F.cross_entropy(model(x_end), y, reduction="none") - F.cross_entropy(model(x), y, reduction="none")
    torch.testing.assert_close(attribution.flatten(1).sum(1), gap, rtol=2e-2, atol=1e-4)


def test_check_options_errors_name_the_parameter_and_range():
    assert check_options("ssr") == {"alpha": 0.3, "scale": 1.0, "average_channels": False,
                                    "top_classes": TOP_CLASSES, "ritz_vectors": RITZ_VECTORS}
    with pytest.raises(ValueError, match=r"alpha=1.5 .*0.0 <= alpha <= 1.0"):
        check_options("ssr", {"alpha": 1.5})
    with pytest.raises(ValueError, match="unknown option.*'beta'.*allowed"):
        check_options("ssr", {"beta": 1})
    with pytest.raises(ValueError, match="steps.*integer"):
        check_options("madry", {"steps": 2.5})
    with pytest.raises(ValueError, match="unknown training recipe 'sgd'"):
        check_options("sgd")
    assert set(OPTIONS) == set(RECIPES)


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    model = _mlp().eval()
    path = tmp_path / "run.pt"
    save_checkpoint(path, model, arch="mlp", num_classes=3, meta={"recipe": "natural", "acc": 0.5},
                    model_kwargs={"in_features": 16, "hidden": [32]})
    loaded, meta = load_checkpoint(path)
    x, _ = _toy(5)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["recipe"] == "natural" and meta["arch"] == "mlp"
    assert set(torch.load(path, weights_only=True)) >= {"state_dict", "arch", "num_classes", "meta"}

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt.*corrupted or truncated.*dvc repro"):
        load_checkpoint(truncated)
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt not found"):
        load_checkpoint(tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, model, arch="mlp", num_classes=3, model_kwargs={"in_features": 16, "hidden": [8]})
    with pytest.raises(CheckpointError, match=r"wrong\.pt: the weights do not fit architecture 'mlp'"):
        load_checkpoint(wrong)


def _loader(x, y, batch_size=16):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)


def test_fit_resume_reproduces_an_uninterrupted_run():
    x, y = _toy(64)
    kwargs = dict(recipe="madry", options={"steps": 2}, epochs=2, lr=1e-2, seed=3, progress=False)
    full = _mlp()
    history = fit(full, _loader(x, y), **kwargs)
    assert [h["epoch"] for h in history] == [1, 2] and history[0]["batches"] == 4

    class Stop(Exception):
        pass

    saved = {}

    def interrupt(epoch, model, optimizer, log):
        saved.update(state={k: v.clone() for k, v in model.state_dict().items()}, opt=optimizer.state_dict())
        raise Stop

    part = _mlp()
    with pytest.raises(Stop):
        fit(part, _loader(x, y), on_epoch_end=interrupt, **kwargs)
    resumed = _mlp(seed=99)
    resumed.load_state_dict(saved["state"])
    history = fit(resumed, _loader(x, y), start_epoch=1, optimizer_state=saved["opt"], **kwargs)
    assert [h["epoch"] for h in history] == [2]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- CLI

PARAMS = {
    "seed": 0,
    "data": {"dataset": "toy", "root": "unused", "train_limit": 48, "test_limit": None},
    "train": {
        "defaults": {"arch": "mlp", "epochs": 2, "lr": 0.01, "batch_size": 16, "optimizer": "adam",
                     "max_batches": None},
        "scratch": {"natural": {"recipe": "natural"},
                    "ssr_s1": {"recipe": "ssr", "alpha": 0.3, "scale": 1.0, "max_batches": 2}},
        "finetune": {"madry": {"recipe": "madry", "init": "natural", "epochs": 1, "lr": 0.001, "epsilon": 0.1,
                               "step_size": 0.02, "steps": 2}},
    },
}


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """A tiny params file and a stand-in data set; returns a function running the CLI on a run name."""
    from smoothgeo.data.containers import InMemoryImages

    x, y = _toy(64)
    xt, yt = _toy(32, seed=1)
    # the train set is in memory (batched indexing), the test set a generic Dataset: both loader paths
    sets = {"train": InMemoryImages((x * 255).round().to(torch.uint8), y), "test": TensorDataset(xt, yt)}
    monkeypatch.setattr("smoothgeo.data.datasets.load_dataset", lambda name, split, root="data/raw", **kw: sets[split])
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))

    def run(name, *, folder="checkpoints", params_path=params):
        return main(["--params", str(params_path), "--name", name, "--checkpoints", str(tmp_path / folder),
                     "--record", str(tmp_path / folder / f"{name}.json"), "--device", "auto", "--quiet"])
    run.tmp = tmp_path
    return run


def test_cli_writes_checkpoint_and_record(cli):
    record = cli("natural")
    folder = cli.tmp / "checkpoints"
    on_disk = json.loads((folder / "natural.json").read_text())
    assert set(on_disk) == set(RECORD_KEYS) and on_disk["test_accuracy"] == record["test_accuracy"]
    assert on_disk["version"] == smoothgeo.__version__ and on_disk["epochs"] == 2 and on_disk["train_size"] == 48
    assert len(on_disk["seconds_per_epoch"]) == 2 and on_disk["mean_seconds_per_epoch"] > 0
    assert on_disk["hyperparameters"]["lr"] == 0.01 and on_disk["device"] in ("cpu", "cuda")
    raw = torch.load(folder / "natural.pt", weights_only=True)
    assert raw["arch"] == "mlp" and raw["meta"]["recipe"] == "natural"
    assert not (folder / "natural.partial.pt").exists()
    model, _ = load_checkpoint(folder / "natural.pt")
    # fine-tuning starts from it; options reach the recipe
    rec = cli("madry")
    assert rec["init"] == "natural" and rec["hyperparameters"]["steps"] == 2 and rec["init_sha256"]
    rec = cli("ssr_s1")
    assert rec["history"][0]["batches"] == 2 and "lambda_max" in rec["history"][0]


def _interrupt_after_first_epoch(cli, monkeypatch, name):
    """Run ``name`` until its first partial checkpoint is written, then 'crash'; restore the real saver."""
    real_save = ckpt.save_partial

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_partial", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cli(name)
    monkeypatch.setattr(ckpt, "save_partial", real_save)


def test_cli_resumes_after_interruption(cli, monkeypatch):
    reference = cli("natural", folder="uninterrupted")
    _interrupt_after_first_epoch(cli, monkeypatch, "natural")
    folder = cli.tmp / "checkpoints"
    assert (folder / "natural.partial.pt").exists() and not (folder / "natural.pt").exists()
    record = cli("natural")
    assert record["resumed_from_epoch"] == 1 and len(record["seconds_per_epoch"]) == 2
    a = torch.load(folder / "natural.pt", weights_only=True)["state_dict"]
    b = torch.load(cli.tmp / "uninterrupted" / "natural.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert record["test_accuracy"] == reference["test_accuracy"]


def test_cli_ignores_partial_from_another_configuration(cli, monkeypatch, capsys):
    _interrupt_after_first_epoch(cli, monkeypatch, "natural")
    changed = json.loads(json.dumps(PARAMS))
    changed["train"]["defaults"]["lr"] = 0.02
    other = cli.tmp / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    record = cli("natural", params_path=other)
    assert record["resumed_from_epoch"] == 0
    assert "different configuration" in capsys.readouterr().err


def test_cli_errors_are_clear(cli):
    with pytest.raises(ValueError, match="unknown training run 'nope'.*known runs"):
        cli("nope")
    with pytest.raises(CheckpointError, match=r"natural\.pt not found"):
        cli("madry")  # its init checkpoint does not exist yet
    bad = json.loads(json.dumps(PARAMS))
    bad["train"]["scratch"]["natural"]["epochs"] = -1
    bad["train"]["scratch"]["ssr_s1"]["alpha"] = 2
    bad["train"]["scratch"]["weird"] = {"recipe": "magic"}
    with pytest.raises(ValueError, match=r"epochs=-1.*integer >= 0"):
        resolve_config(bad, "natural")
    with pytest.raises(ValueError, match=r"alpha=2.0 is out of range.*0.0 <= alpha <= 1.0"):
        resolve_config(bad, "ssr_s1")
    with pytest.raises(ValueError, match="recipe='magic'.*one of"):
        resolve_config(bad, "weird")
    bad["train"]["scratch"]["natural"].update(epochs=1, pretrained=True)
    with pytest.raises(ValueError, match=r"pretrained=True.*arch resnet50"):
        resolve_config(bad, "natural")


def test_cli_epochs_zero_saves_the_initial_model_without_training(cli):
    """epochs 0 is how a pretrained model (ImageNet ResNet-50) becomes a checkpoint: no train split needed."""
    import smoothgeo.data.datasets

    params = json.loads(json.dumps(PARAMS))
    params["train"]["scratch"]["init_only"] = {"recipe": "natural", "epochs": 0}
    path = cli.tmp / "zero.yaml"
    path.write_text(yaml.safe_dump(params))
    loader = smoothgeo.data.datasets.load_dataset
    record = cli("init_only", params_path=path)
    assert record["history"] == [] and record["train_size"] == 0 and record["epochs"] == 0
    model, meta = load_checkpoint(cli.tmp / "checkpoints" / "init_only.pt")
    assert meta["epochs"] == 0 and loader is smoothgeo.data.datasets.load_dataset
    # the weights are the seeded initial model's, untouched (a stray training step would change them)
    from smoothgeo.core.models import build_model
    from smoothgeo.pipeline.train import _model_kwargs

    torch.manual_seed(record["seed"])
    initial = build_model("mlp", num_classes=3, **_model_kwargs("mlp", (1, 4, 4)))
    saved, fresh = model.state_dict(), initial.state_dict()
    assert saved.keys() == fresh.keys() and all(torch.equal(saved[k], fresh[k]) for k in saved)
    torch.manual_seed(record["seed"] + 1)
    other = build_model("mlp", num_classes=3, **_model_kwargs("mlp", (1, 4, 4))).state_dict()
    assert not all(torch.equal(saved[k], other[k]) for k in saved)  # the comparison can tell seeds apart


# ------------------------------------------------------------------------- check_options ranges (issue 10)

@pytest.mark.parametrize("recipe,options,match", [
    ("weight_decay", {"weight_decay": 5.0}, r"weight_decay=5.0 is out of range; allowed: 0.0 <= weight_decay <= 0.1"),
    ("madry", {"steps": 100000}, r"steps=100000 is out of range; allowed: 1 <= steps <= 1000"),
    ("madry", {"step_size": 2.0}, r"step_size=2.0 is out of range"),
    ("ig_norm", {"lam": 1e6}, r"lam=1000000.0 is out of range"),
    ("ssr", {"scale": 1e9}, r"scale=1000000000.0 is out of range"),
    ("ssr", {"alpha": float("nan")}, r"alpha=nan is out of range"),
])
def test_check_options_rejects_implausible_values(recipe, options, match):
    from smoothgeo.training.recipes import check_options

    with pytest.raises(ValueError, match=match):
        check_options(recipe, options)


def test_check_options_accepts_every_profile_value():
    from pathlib import Path

    from smoothgeo.pipeline.train import resolve_config

    root = Path(__file__).resolve().parents[1]
    for path in [root / "params.yaml", *sorted((root / "profiles").glob("*.yaml"))]:
        params = yaml.safe_load(path.read_text())
        for kind in ("scratch", "finetune"):
            for name in (params["train"].get(kind) or {}):
                resolve_config(params, name)


def test_lr_out_of_range_is_rejected_with_the_range(cli):
    from smoothgeo.pipeline.train import resolve_config

    bad = json.loads(json.dumps(PARAMS))
    bad["train"]["defaults"]["lr"] = 5.0
    with pytest.raises(ValueError, match=r"lr=5.0 is invalid; allowed: a number with 0 < lr <= 1"):
        resolve_config(bad, "natural")


# ---------------------------------------------------------------- recipe losses against their formulas (issue 19)

def _ce_hessian_lambda_max(model, x, y):
    """lambda_max of the input Hessian of CE, one image at a time by autograd (independent of geometry.py)."""
    values = []
    for xi, yi in zip(x, y):
        def ce(z):
            return F.cross_entropy(model(z.view(1, *xi.shape)), yi.view(1))
        h = torch.autograd.functional.hessian(ce, xi.flatten())
        values.append(torch.linalg.eigvalsh(h).max())
    return torch.stack(values)


def _pgd_reference(model, x, objective, *, epsilon, step_size, steps, start):
    """Signed-gradient ascent on objective(z).sum() in B_inf(x, eps) ∩ [0, 1], one image at a time."""
    out = []
    for i in range(len(x)):
        lo, hi = (x[i] - epsilon).clamp(0, 1), (x[i] + epsilon).clamp(0, 1)
        z = start[i].clone()
        for _ in range(steps):
            z = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(objective(i, z), z)
            z = torch.min(torch.max(z.detach() + step_size * g.sign(), lo), hi)
        out.append(z.detach())
    return torch.stack(out)


def test_ssr_loss_is_the_weighted_sum_of_ce_and_scaled_lambda_max():
    """(1 - alpha) CE + alpha * scale * mean lambda_max, with alpha and scale != 1: swapped weights must fail."""
    x, y = _toy(6)
    model = _mlp(seed=2).double()
    x = x.double()
    alpha, scale = 0.25, 3.0
    loss, logs = ssr_loss(model, x, y, alpha=alpha, scale=scale)
    ce = F.cross_entropy(model(x), y)
    lam = _ce_hessian_lambda_max(model, x, y).mean()
    assert lam > 1e-3 and abs(ce.item() - scale * lam.item()) > 0.1  # the two terms are distinguishable
    assert logs["ce"] == pytest.approx(ce.item(), rel=1e-12)
    assert logs["lambda_max"] == pytest.approx(lam.item(), rel=1e-8)
    assert loss.item() == pytest.approx((1 - alpha) * ce.item() + alpha * scale * lam.item(), rel=1e-8)
    # alpha = 0 is plain cross-entropy, whatever the scale
    assert ssr_loss(model, x, y, alpha=0.0, scale=scale)[0].item() == pytest.approx(ce.item(), rel=1e-12)


def test_madry_loss_is_ce_at_the_pgd_point_and_above_clean_ce():
    from smoothgeo.training.recipes import madry_loss

    x, y = _toy(8)
    model = _mlp(seed=1).double()
    x = x.double()
    opts = dict(epsilon=0.1, step_size=0.03, steps=4)
    ce_clean = F.cross_entropy(model(x), y)

    def objective(i, z):
        return F.cross_entropy(model(z[None]), y[i:i + 1])

    for random_start in (False, True):
        torch.manual_seed(5)
        loss, logs = madry_loss(model, x, y, random_start=random_start, **opts)
        torch.manual_seed(5)
        start = x + (2 * torch.rand(x.shape, dtype=x.dtype) - 1) * opts["epsilon"] if random_start else x
        start = torch.min(torch.max(start, (x - 0.1).clamp(0, 1)), (x + 0.1).clamp(0, 1))
        xa = _pgd_reference(model, x, objective, start=start, **opts)
        expected = F.cross_entropy(model(xa), y)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
        assert logs["ce_adv"] == pytest.approx(expected.item(), rel=1e-9)
        assert loss.item() > ce_clean.item() + 0.01  # the adversarial point is worse than the clean one


def test_ig_norm_loss_is_ce_plus_lambda_ig_norm_at_the_pgd_point():
    from smoothgeo.training.recipes import ig_norm_loss

    x, y = _toy(5)
    model = _mlp(seed=3).double()
    x = x.double()
    lam, m, eps = 0.7, 6, 0.1
    ce_clean = F.cross_entropy(model(x), y)

    def ig_l1(i, z, create_graph):
        """||IG of the per-example CE along x_i -> z||_1, right Riemann sum with m points, by hand."""
        total = torch.zeros_like(z)
        for k in range(1, m + 1):
            p = (x[i] + k / m * (z - x[i]))
            if not p.requires_grad:
                p = p.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(p[None]), y[i:i + 1]), p, create_graph=create_graph)
            total = total + g
        return ((z - x[i]) * total / m).abs().sum()

    torch.manual_seed(4)  # the random start (from the clean point IG is 0 and so is its gradient)
    loss, logs = ig_norm_loss(model, x, y, epsilon=eps, lam=lam, ig_steps=m, steps=3, step_size=0.04)
    torch.manual_seed(4)
    start = (x + (2 * torch.rand(x.shape, dtype=x.dtype) - 1) * eps).clamp(0, 1)
    xa = _pgd_reference(model, x, lambda i, z: ig_l1(i, z, True), epsilon=eps, step_size=0.04, steps=3,
                        start=start)
    ig = torch.stack([ig_l1(i, xa[i], False) for i in range(len(x))]).mean()
    assert ig.item() > 1e-3
    assert logs["ig_norm"] == pytest.approx(ig.item(), rel=1e-8)
    assert logs["ce"] == pytest.approx(ce_clean.item(), rel=1e-12)
    assert loss.item() == pytest.approx(ce_clean.item() + lam * ig.item(), rel=1e-8)


def test_checkpoint_of_batchnorm_dropout_model_saved_in_train_mode_loads_in_eval_mode(tmp_path, monkeypatch):
    """A checkpoint loads ready for evaluation: BatchNorm uses its running statistics and dropout is off."""
    from smoothgeo.core import models

    class BNDropout(nn.Module):
        def __init__(self, num_classes=3, in_features=16):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                     nn.Dropout(0.5), nn.Linear(32, num_classes))

        def forward(self, x):
            return self.net(x)

    monkeypatch.setitem(models.ARCHITECTURES, "bn_dropout", models.Architecture(BNDropout, lambda s: {}, 3))
    x, _ = _toy(32)
    cases = [("bn_dropout", BNDropout, {}), ("resnet20", models.ResNet20,
                                             {"in_channels": 1, "mean": [0.5], "std": [0.25], "blocks_per_stage": 1,
                                              "width": 4})]
    for arch, cls, kwargs in cases:
        torch.manual_seed(0)
        model = cls(num_classes=3, **kwargs)
        with torch.no_grad():
            for _ in range(3):  # move the running statistics away from their initial values
                model(x * 3 + 1)
        assert model.training
        path = tmp_path / f"{arch}.pt"
        save_checkpoint(path, model, arch=arch, num_classes=3, model_kwargs=kwargs)
        loaded, _ = load_checkpoint(path)
        assert not any(m.training for m in loaded.modules()), arch
        with torch.no_grad():
            model.eval()
            reference = model(x)
            assert torch.equal(loaded(x), reference), arch
            model.train()
            assert not torch.allclose(model(x), reference, atol=1e-3), arch  # train mode does differ here
