"""Tests of the attribution attack loop (smoothgeo.core.attacks): CPU, tiny models, seconds."""
import pytest
import torch
from torch import nn

from smoothgeo.core.attacks import KINDS, attack, derive_seed, eval_mode
from smoothgeo.core.attributions import METHODS, attribute, map_of

SIZE, CLASSES = 12, 4
FAST = {"SM": {}, "IG": {"steps": 4}, "SG": {"samples": 4, "noise_level": 0.1}, "UG": {"samples": 4, "radius": 0.1}}


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half a fixed random texture per class, half pixel noise: maps spread over many pixels."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(CLASSES, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return 0.5 * templates[y] + 0.5 * torch.rand(n, 1, SIZE, SIZE, generator=g), y


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * (SIZE // 2) ** 2, 32), nn.ReLU(), nn.Linear(32, CLASSES))


@pytest.fixture(scope="module")
def trained():
    """A small ReLU CNN trained for a second on the texture data; returns (model, x, y) of 16 test images."""
    torch.manual_seed(0)
    model = tiny_cnn()
    x, y = make_data(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(120):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = make_data(16, seed=2)
    assert (model(xt).argmax(1) == yt).float().mean() >= 0.75
    return model, xt, yt


def _invariants(result, x, y, model, eps):
    assert result.x_adv.shape == x.shape
    assert float((result.x_adv - x).abs().max()) <= eps + 1e-6
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    assert torch.allclose(result.linf, (result.x_adv - x).flatten(1).abs().amax(1))
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.attacked, model(x).argmax(1) == y)
    assert bool((pred[result.attacked] == y[result.attacked]).all())
    assert bool(result.label_kept.all())
    assert torch.equal(result.x_adv[~result.attacked], x[~result.attacked])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_smoke_every_method_and_kind(trained, method, kind):
    model, x, y = trained
    y = y.clone()
    y[0] = (model(x[:1]).argmax(1) + 1) % CLASSES  # one misclassified image: must not be attacked
    target = torch.rand(SIZE, SIZE) if kind == "targeted" else None
    result = attack(model, x, y, method=method, kind=kind, epsilon=0.1, step_size=0.02, steps=3, k=10,
                    restarts=2, method_options=FAST[method], target_map=target)
    _invariants(result, x, y, model, 0.1)
    assert not bool(result.attacked[0])
    assert bool(result.score[~result.attacked].isnan().all())
    assert bool(result.score[result.attacked].isfinite().all())


@pytest.mark.parametrize("method", ["SM", "SG", "UG"])
def test_fixed_seed_is_reproducible(trained, method):
    model, x, y = trained
    runs = [attack(model, x, y, method=method, kind="topk", epsilon=0.1, steps=3, k=10, restarts=2, seed=s,
                   method_options=FAST[method]) for s in (3, 3, 4)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert torch.equal(runs[0].score, runs[1].score)
    assert not torch.equal(runs[0].x_adv, runs[2].x_adv)  # restarts start at random points


def test_topk_attack_beats_random(trained):
    model, x, y = trained
    kw = dict(method="SM", epsilon=0.1, step_size=0.01, steps=15, k=10, beta=10.0)
    topk = attack(model, x, y, kind="topk", **kw).score
    best_random = attack(model, x, y, kind="random", **kw).score        # worst of 15 accepted draws
    one_random = attack(model, x, y, kind="random", **{**kw, "steps": 1}).score
    assert float(topk.mean()) < float(best_random.mean()) - 0.05
    assert float(topk.mean()) < float(one_random.mean()) - 0.2
    assert float(best_random.mean()) <= float(one_random.mean())


def test_targeted_attack_moves_map_toward_target(trained):
    model, x, y = trained
    with torch.no_grad():
        y_ok = model(x).argmax(1)
    clean = map_of("SM", attribute("SM", model, x, y_ok), x)
    target = clean.roll(1, dims=0)  # another image's map
    result = attack(model, x, y_ok, method="SM", kind="targeted", epsilon=0.1, step_size=0.01, steps=15, k=10,
                    target_map=target)
    adv = map_of("SM", attribute("SM", model, result.x_adv, y_ok), result.x_adv)
    before = (clean - target).pow(2).flatten(1).mean(1)
    after = (adv - target).pow(2).flatten(1).mean(1)
    assert torch.allclose(after, result.score)
    assert bool((after <= before + 1e-6).all()) and float(after.mean()) < 0.9 * float(before.mean())


def _random_dislocation_floor(model, x, y, epsilon, draws, seed=0):
    """Per image, the largest centre-of-mass dislocation over ``draws`` random sign perturbations of size eps
    that keep the label: what an attack with as many steps must beat."""
    from smoothgeo.core.metrics import mass_center_dislocation

    g = torch.Generator().manual_seed(seed)
    clean = map_of("SM", attribute("SM", model, x, y), x)
    best = torch.zeros(len(x))
    for _ in range(draws):
        xr = (x + epsilon * (torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1)).clamp(0, 1)
        with torch.no_grad():
            ok = model(xr).argmax(1) == y
        d = mass_center_dislocation(clean, map_of("SM", attribute("SM", model, xr, y), xr))
        best = torch.where(ok, torch.maximum(best, d), best)
    return best


def test_mass_center_attack_beats_the_random_floor(trained):
    """Measured: the attack moves the centre 0.72 px on average, the best of 10 random draws 0.40 px, and the
    attack with its step sign flipped (descending its own loss) 0.10 px."""
    model, x, y = trained
    result = attack(model, x, y, method="SM", kind="mass_center", epsilon=0.1, steps=10, k=10)
    moved = -result.score[result.attacked]
    floor = _random_dislocation_floor(model, x, y, 0.1, draws=10)[result.attacked]
    assert float(moved.mean()) > float(floor.mean()) + 0.15  # pixels of dislocation
    assert float((moved > floor).float().mean()) >= 0.75


def test_restarts_keep_lowest_kendall(trained):
    model, x, y = trained
    one = attack(model, x, y, method="SM", kind="topk", epsilon=0.1, steps=5, k=10, restarts=1)
    three = attack(model, x, y, method="SM", kind="topk", epsilon=0.1, steps=5, k=10, restarts=3)
    a = one.attacked
    assert bool((three.kendall[a] <= one.kendall[a] + 1e-6).all())
    assert set(three.restart.tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("on_reject", ["backtrack", "revert", "continue"])
def test_label_changing_steps_are_rejected(trained, on_reject):
    model, x, y = trained
    result = attack(model, x, y, method="SM", kind="topk", epsilon=1.0, step_size=0.25, steps=8, k=10,
                    on_reject=on_reject)
    assert int(result.rejected_steps.sum()) > 0  # the big budget does flip labels ...
    _invariants(result, x, y, model, 1.0)        # ... yet no returned image has a changed label
    a = result.attacked
    assert torch.equal(result.accepted_steps[a] + result.rejected_steps[a], torch.full_like(result.restart[a], 8))
    assert int(result.accepted_steps[~a].sum() + result.rejected_steps[~a].sum()) == 0


def test_backtrack_does_not_stall_where_revert_does(trained):
    """SM is deterministic: after a rejection "revert" proposes the same step again and again (a stall);
    "backtrack" halves that image's step and moves on."""
    model, x, y = trained
    kw = dict(method="SM", kind="topk", epsilon=0.3, step_size=0.05, steps=12, k=10, stall_window=5)
    revert = attack(model, x, y, on_reject="revert", **kw)
    back = attack(model, x, y, on_reject="backtrack", **kw)
    assert int(revert.stalled.sum()) >= 2  # the case is real ...
    stuck = revert.stalled
    assert not bool(back.stalled.any())  # ... and backtracking escapes it
    assert bool((back.accepted_steps[stuck] > revert.accepted_steps[stuck]).all())
    assert bool((back.stalled_runs == 0).all()) and torch.equal(revert.stalled_runs, revert.stalled.long())
    _invariants(back, x, y, model, 0.3)


def test_backtrack_equals_fixed_step_without_rejections(trained):
    model, x, y = trained
    kw = dict(method="SM", kind="topk", epsilon=0.1, step_size=0.01, steps=6, k=10, restarts=2)
    back, revert = attack(model, x, y, on_reject="backtrack", **kw), attack(model, x, y, on_reject="revert", **kw)
    assert int(back.rejected_steps.sum()) == 0
    assert torch.equal(back.x_adv, revert.x_adv) and torch.equal(back.score, revert.score)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("on_reject", ["backtrack", "continue"])
def test_invariants_at_a_small_budget_with_pixels_at_the_box_edges(trained, kind, on_reject):
    """eps = 0.03 (a step of 0.02 leaves the ball after two steps) on images with pixels at 0 and 1: every
    returned pixel stays in [0, 1] and within eps of the clean one (at eps = 1 neither could be noticed)."""
    model, x, y = trained
    x = x.clone()
    x[:, :, 0] = 0.0    # the first row black, the last one white
    x[:, :, -1] = 1.0
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.5  # most images are attacked
    target = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(3)) if kind == "targeted" else None
    result = attack(model, x, y, method="SM", kind=kind, epsilon=0.03, step_size=0.02, steps=6, k=10,
                    restarts=2, on_reject=on_reject, target_map=target)
    _invariants(result, x, y, model, 0.03)
    moved = result.linf[result.attacked]
    assert float(moved.max()) == pytest.approx(0.03, abs=1e-6)  # the attack does reach the edge of the ball
    assert bool((result.x_adv[:, :, 0] <= 0.03 + 1e-6).all()) and bool((result.x_adv[:, :, -1] >= 0.97 - 1e-6).all())


def test_model_mode_restored(trained):
    model, x, y = trained
    model.train()
    model[0].eval()  # a mixed state must come back as it was
    try:
        attack(model, x, y, method="SM", kind="topk", steps=1, k=10)
        assert model.training and not model[0].training and model[1].training
    finally:
        model.eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())


def test_batch_size_and_no_surrogate_warning(trained):
    model, x, y = trained
    result = attack(model, x, y, method="SM", kind="topk", steps=2, k=10, batch_size=3)
    _invariants(result, x, y, model, 0.1)
    with pytest.warns(UserWarning, match="beta"):
        attack(model, x, y, method="SM", kind="topk", steps=1, k=10, beta=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"epsilon": -0.1}, r"epsilon must be in \[0, 1\]"),
    ({"step_size": 0.0}, r"step_size must be > 0"),
    ({"k": SIZE * SIZE + 1}, r"k must be an integer in \[1, 144\]"),
    ({"method": "LRP"}, r"unknown attribution method 'LRP'"),
    ({"kind": "blur"}, r"unknown attack kind 'blur'"),
    ({"restarts": 0}, r"restarts must be an integer >= 1"),
    ({"on_reject": "ignore"}, r"on_reject must be one of \['backtrack', 'revert', 'continue'\]"),
    ({"stall_window": 0}, r"stall_window must be an integer in \[1, 30\]"),
    ({"beta": 0.0}, r"beta .* must be > 0"),
    ({"convention": "raw"}, r"unknown map convention"),
    ({"kind": "targeted"}, r"needs target_map"),
    ({"target_map": torch.ones(SIZE, SIZE)}, r"only used by kind='targeted'"),
    ({"method": "IG", "method_options": {"radius": 0.1}}, r"method_options .* not accepted by method 'IG'"),
])
def test_bad_settings_raise(trained, kwargs, match):
    model, x, y = trained
    with pytest.raises(ValueError, match=match):
        attack(model, x, y, **{"steps": 1, "k": 10, **kwargs})


def test_bad_inputs_raise(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        attack(model, x * 2 - 0.5, y, steps=1, k=10)
    with pytest.raises(ValueError, match=r"x must be a float tensor of images \(N, C, H, W\)"):
        attack(model, x[:, 0], y, steps=1, k=10)
    with pytest.raises(ValueError, match=r"y must be integer class labels of shape \(16,\)"):
        attack(model, x, y[:3], steps=1, k=10)


def test_derive_seed_is_stable():
    assert derive_seed(0, "a", 0.1) == derive_seed(0, "a", 0.1) != derive_seed(0, "a", 0.2)
    assert 0 <= derive_seed(123, "x") < 2 ** 63


def test_direction_options_only_change_the_direction(trained):
    model, x, y = trained
    kw = dict(method="SG", kind="topk", epsilon=0.1, steps=2, k=10, method_options={"samples": 4})
    cheap = attack(model, x, y, direction_options={"samples": 2}, **kw)
    _invariants(cheap, x, y, model, 0.1)
    same = attack(model, x, y, direction_options={"samples": 4}, **kw)
    assert torch.equal(same.x_adv, attack(model, x, y, **kw).x_adv)
    with pytest.raises(ValueError, match="not accepted by method 'SG'"):
        attack(model, x, y, direction_options={"steps": 3}, **kw)


@pytest.mark.parametrize("select", ["kendall", "score"])
def test_ensemble_is_the_worst_member_per_image(trained, select):
    """The ensemble is never weaker than any member alone (same seeds): per image it *is* the best of them."""
    model, x, y = trained
    kw = dict(method="SM", kind="topk", epsilon=0.1, step_size=0.02, steps=3, k=10, restarts=2, seed=7,
              select=select)
    betas = (3.0, 10.0, 30.0)
    singles = [attack(model, x, y, surrogates=[b], **kw) for b in betas]
    same = attack(model, x, y, beta=10.0, **kw)  # surrogates=[b] is the plain attack with beta=b
    assert torch.equal(same.x_adv, singles[1].x_adv) and torch.equal(same.kendall, singles[1].kendall)
    ens = attack(model, x, y, surrogates=betas, **kw)
    _invariants(ens, x, y, model, 0.1)
    assert ens.surrogates == betas and set(ens.member.tolist()) <= {0, 1, 2}
    a = ens.attacked
    crit = (lambda r: r.kendall) if select == "kendall" else (lambda r: r.score)
    for single in singles:
        assert bool((crit(ens)[a] <= crit(single)[a]).all())
    assert torch.equal(crit(ens)[a], torch.stack([crit(s) for s in singles]).min(0).values[a])
    for i in a.nonzero().flatten().tolist():
        won = singles[int(ens.member[i])]
        assert torch.equal(ens.x_adv[i], won.x_adv[i]) and ens.restart[i] == won.restart[i]
        assert ens.score[i] == won.score[i] and ens.kendall[i] == won.kendall[i]
    assert torch.equal(ens.accepted_steps, sum(s.accepted_steps for s in singles))
    assert torch.equal(ens.rejected_steps, sum(s.rejected_steps for s in singles))
    assert len(set(ens.member[a].tolist())) > 1  # the members do win on different images here


def test_ensemble_settings(trained):
    model, x, y = trained
    rand = attack(model, x, y, kind="random", steps=2, k=10, surrogates=(3.0, 10.0))
    assert rand.surrogates == (None,) and int(rand.member.sum()) == 0  # random needs no surrogate: one run
    with pytest.warns(UserWarning, match="None surrogate"):
        mixed = attack(model, x, y, steps=1, k=10, surrogates=(10.0, None))
    assert mixed.surrogates == (10.0, None)
    for bad, match in [((), "non-empty sequence"), ((10.0, 10.0), "repeated entries"), ((0.0,), "beta > 0 or None"),
                       ("10", "non-empty sequence")]:
        with pytest.raises(ValueError, match=match):
            attack(model, x, y, steps=1, k=10, surrogates=bad)
    with pytest.raises(ValueError, match="select must be one of"):
        attack(model, x, y, steps=1, k=10, select="topk")


# ------------------------------------------------------------------------------------------- the L2 threat model
@pytest.mark.parametrize("kind", ["topk", "random", "mass_center"])
def test_l2_attack_stays_in_the_ball_and_keeps_the_label(trained, kind):
    """norm='l2': every returned image lies in the L2 ball (and in [0, 1]) and keeps its label."""
    model, x, y = trained
    eps = 0.8   # an L2 radius: a few pixels' worth, well above any single pixel's range
    r = attack(model, x, y, kind=kind, epsilon=eps, step_size=0.2, steps=6, restarts=2, beta=10.0, norm="l2",
               seed=3)
    assert r.norm == "l2"
    assert float(r.l2.max()) <= eps + 1e-5
    assert torch.allclose(r.l2, (r.x_adv - x).flatten(1).norm(dim=1))
    assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
    with torch.no_grad():
        assert bool((model(r.x_adv).argmax(1)[r.attacked] == y[r.attacked]).all())
    moved = r.l2[r.attacked]
    assert float(moved.max()) > 0.5 * eps    # it does move: the budget is used, not ignored
    if kind == "topk":   # an L2 top-k attack beats L2 noise of the same budget on this model
        noise = attack(model, x, y, kind="random", epsilon=eps, steps=12, norm="l2", seed=3)
        assert float(r.score[r.attacked].mean()) < float(noise.score[noise.attacked].mean())


def test_l2_noise_draws_sit_on_the_sphere():
    from smoothgeo.core.threat import Threat

    x = torch.full((5, 1, 8, 8), 0.5)
    t = Threat(x, 0.7, "l2")
    g = torch.Generator().manual_seed(0)
    assert torch.allclose((t.noise(g) - x).flatten(1).norm(dim=1), torch.full((5,), 0.7), atol=1e-5)
    starts = torch.stack([(t.random_start(g) - x).flatten(1).norm(dim=1) for _ in range(200)])
    assert float(starts.max()) <= 0.7 + 1e-5
    # uniform in a 64-dimensional ball: the radius' CDF is (r / eps)^64, so its median is eps * 0.5^(1/64)
    assert abs(float(starts.median()) - 0.7 * 0.5 ** (1 / 64)) < 0.01
    far = t.project(x + 10.0)
    assert torch.allclose((far - x).flatten(1).norm(dim=1), torch.full((5,), 0.7), atol=1e-5)


def test_l2_linf_radius_checks():
    x, y = make_data(2, seed=0)
    model = tiny_cnn().eval()
    with pytest.raises(ValueError, match=r"norm must be one of"):
        attack(model, x, y, norm="l1", steps=1)
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\] for norm='linf'"):
        attack(model, x, y, epsilon=1.5, steps=1)
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 12\] for norm='l2'"):
        attack(model, x, y, epsilon=13.0, steps=1, norm="l2")
    attack(model, x, y, epsilon=1.5, steps=1, norm="l2")   # an L2 radius above 1 is fine
