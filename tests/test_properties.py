"""Property-based tests (Hypothesis, issue 20): random shapes, dtypes, NaNs, infinities and empty batches thrown at
the public functions of core.attributions, core.attacks and core.metrics. Each call must return a result or raise
``ValueError`` with a message; any other exception (TypeError, RuntimeError, ZeroDivisionError, IndexError,
OverflowError ...) or a crash fails. Tiny models, few examples, no deadline: the whole file runs in well under a
minute on one CPU thread."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from smoothgeo.core import attacks, attributions, metrics  # noqa: E402

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=60)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
          torch.bool]
SPECIAL = [float("nan"), float("inf"), float("-inf")]
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-5, 10),
                    st.sampled_from([0, 0.0, 1e-300, 1e300, -0.0]))


def outcome(fn, *args, **kwargs):
    """Call ``fn``: its result, or None when it raised ValueError (with a message); anything else propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = fn(*args, **kwargs)
        except ValueError as exc:
            assert str(exc), f"{fn.__name__} raised a ValueError without a message"
            hypothesis.event(f"{fn.__name__}: ValueError {str(exc)[:40]}")
            return None
    hypothesis.event(f"{fn.__name__}: result")
    return result


@st.composite
def tensors(draw, *, dims=(1, 2, 3, 4), max_side=4, batch=(0, 3), dtypes=DTYPES, special=True):
    """A tensor of random shape (the batch dimension may be 0), dtype and values, NaN/inf sprinkled in."""
    ndim = draw(st.sampled_from(dims))
    shape = [draw(st.integers(*batch))] + [draw(st.integers(1, max_side)) for _ in range(ndim - 1)]
    dtype = draw(st.one_of(st.sampled_from(dtypes[:1]), st.sampled_from(dtypes)))   # the first one half the time
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    t = torch.rand(shape, generator=g, dtype=torch.float64) * draw(st.sampled_from([1.0, 50.0]))
    if special and t.numel() and draw(st.integers(0, 2)) == 0:   # NaN/inf in a third of the tensors
        flat = t.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIAL))
    if dtype == torch.bool:
        return t > 0.5
    if not dtype.is_floating_point:
        return torch.nan_to_num(t, nan=0.0, posinf=200.0, neginf=0.0).round().to(dtype)
    return t.to(dtype)


class Tiny(nn.Module):
    """Flatten -> Linear(d, 3), built for inputs shaped like ``example``; BatchNorm so eval mode matters."""

    def __init__(self, example_shape, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        d = max(1, math.prod(example_shape[1:]))
        self.net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(d), nn.Linear(d, 3))

    def forward(self, x):
        return self.net(x)


def _model_for(x):
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) and x.dim() >= 2 else (1, 1)
    return Tiny(shape).double() if isinstance(x, torch.Tensor) and x.dtype == torch.float64 else Tiny(shape)


targets = st.one_of(st.none(), st.none(), st.integers(0, 2), st.integers(-2, 4), st.lists(st.integers(-1, 4),
                                                                                          max_size=4))


# ------------------------------------------------------------------------------------------- attributions
@SETTINGS
@given(x=tensors(), target=targets, method=st.sampled_from(sorted(attributions.METHODS)),
       steps=st.one_of(st.integers(1, 3), st.integers(-1, 3), numbers),
       level=st.one_of(st.floats(0, 1), numbers), chunk=st.one_of(st.none(), st.integers(1, 3), numbers),
       baseline=st.one_of(st.none(), st.floats(0, 1), numbers), train=st.booleans())
def test_attributions_return_a_result_or_a_value_error(x, target, method, steps, level, chunk, baseline, train):
    if method not in ("SM", "IG", "SG", "UG"):
        return  # captum adapters registered by other tests
    model = _model_for(x).train(train)
    options = {"IG": {"steps": steps, "baseline": baseline, "chunk_size": chunk},
               "SG": {"samples": steps, "noise_level": level, "chunk_size": chunk},
               "UG": {"samples": steps, "radius": level, "chunk_size": chunk}, "SM": {}}[method]
    if isinstance(target, list):
        target = torch.tensor(target, dtype=torch.long)
    generator = attributions.make_generator("cpu", 0)
    result = outcome(attributions.attribute, method, model, x, target, generator=generator, **options)
    assert model.training == train   # the mode is restored
    if result is not None:
        assert result.shape == x.shape and result.dtype == x.dtype


@SETTINGS
@given(x=tensors(dims=(4, 2, 3), dtypes=[torch.float32, torch.float64], special=False),
       special=st.sampled_from([None, *SPECIAL]), method=st.sampled_from(["SM", "IG", "SG", "UG"]),
       steps=st.integers(1, 3), level=st.floats(0, 1), which=st.sampled_from(["x", "level", "baseline", "none"]))
def test_attributions_of_valid_inputs_give_results_and_one_bad_value_a_value_error(x, special, method, steps, level,
                                                                                  which):
    model = _model_for(x).train()
    baseline = torch.zeros_like(x)
    if special is not None and x.numel() and which != "none":
        if which == "x":
            x = x.clone()
            x.view(-1)[0] = special
        elif which == "level":
            level = special
        else:
            baseline.view(-1)[-1] = special
    options = {"IG": {"steps": steps, "baseline": baseline}, "SG": {"samples": steps, "noise_level": level},
               "UG": {"samples": steps, "radius": level}, "SM": {}}[method]
    result = outcome(attributions.attribute, method, model, x, None,
                     generator=attributions.make_generator("cpu", 0), **options)
    bad = special is not None and x.numel() and (which == "x" or (which == "level" and method in ("SG", "UG"))
                                                 or (which == "baseline" and method == "IG"))
    assert (result is None) == bool(bad), "a NaN/inf input or option must be refused, a valid call must succeed"
    if result is not None:
        assert result.shape == x.shape and bool(torch.isfinite(result).all())


@SETTINGS
@given(attr=tensors(), x=st.one_of(st.none(), tensors()), method=st.sampled_from(["SM", "IG", "SG", "UG"]),
       convention=st.sampled_from(["grad_times_input", "abs", "other"]), same=st.booleans())
def test_attribution_maps_return_a_result_or_a_value_error(attr, x, method, convention, same):
    if same and x is not None:
        x = torch.rand_like(attr, dtype=torch.float32) if attr.numel() else torch.zeros(attr.shape)
    result = outcome(attributions.map_of, method, attr, x, convention=convention)
    if result is not None:
        assert result.shape == (attr.shape[0], *attr.shape[2:])
    outcome(attributions.attribution_map, attr, x, times_input=same)


@SETTINGS
@given(x=tensors(), target=targets)
def test_resolve_target_returns_a_result_or_a_value_error(x, target):
    model = _model_for(x).train()
    if isinstance(target, list):
        target = torch.tensor(target)
    result = outcome(attributions.resolve_target, model, x, target)
    if result is not None:
        assert result.dtype == torch.long and result.shape == (x.shape[0],)
    assert model.training


@SETTINGS
@given(level=numbers, kind=st.sampled_from(["gaussian", "uniform"]))
def test_noise_samplers_refuse_bad_levels_with_a_value_error(level, kind):
    maker = attributions.gaussian_sampler if kind == "gaussian" else attributions.uniform_sampler
    sampler = outcome(maker, level)
    if sampler is not None:
        assert math.isfinite(level) and level >= 0
        assert sampler(torch.rand(2, 1, 2, 2), 3, None).shape == (3, 2, 1, 2, 2)


# ------------------------------------------------------------------------------------------------ metrics
pairs = tensors(dims=(3, 3, 1, 2, 4), max_side=9)


@SETTINGS
@given(m1=pairs, other=st.one_of(st.none(), st.none(), st.none(), pairs),
       k=st.one_of(st.integers(1, 10), st.integers(-1, 90), numbers),
       route=st.sampled_from(["auto", "fast", "quadratic", "bogus"]), block=st.integers(1, 2 ** 12))
def test_metrics_return_a_result_or_a_value_error(m1, other, k, route, block):
    # other: None most of the time (a map of m1's shape and dtype), else a map of its own shape
    m2 = torch.rand(m1.shape).to(m1.dtype) if other is None else other   # mostly equal shapes, sometimes not
    calls = [(metrics.topk_intersection, (m1, m2, k), {}),
             (metrics.kendall_tau, (m1, m2), {"route": route, "max_elements": block}),
             (metrics.spearman_rho, (m1, m2), {}), (metrics.mass_center_dislocation, (m1, m2), {}),
             (metrics.cosine_distance, (m1, m2), {}), (metrics.degenerate_pairs, (m1, m2), {}),
             (metrics.mass_center, (m1,), {}), (metrics.rank_average, (m1,), {})]
    for fn, args, kwargs in calls:
        result = outcome(fn, *args, **kwargs)
        if result is not None and fn not in (metrics.mass_center, metrics.rank_average):
            assert result.shape == (m1.shape[0],)
            if fn is not metrics.degenerate_pairs:
                assert result.is_floating_point()


@SETTINGS
@given(m1=tensors(dims=(3,), max_side=6, batch=(1, 3), dtypes=[torch.int64, torch.int32, torch.uint8],
                  special=False))
def test_metrics_on_integer_maps_equal_those_on_float64_maps(m1):
    m2 = m1.flip(-1)
    for name, fn in metrics.METRICS.items():
        args = (min(3, m1[0].numel()),) if name in ("topk", "lens_topk") else ()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, b = fn(m1, m2, *args), fn(m1.double(), m2.double(), *args)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


# ------------------------------------------------------------------------------------------------ attacks
images = tensors(dims=(4,), max_side=3, batch=(0, 2), dtypes=[torch.float32, torch.float64, torch.float16,
                                                                 torch.int64])


@FEW
@given(x=images, labels=st.lists(st.integers(-1, 4), min_size=0, max_size=3),
       method=st.sampled_from(["SM", "IG", "SG", "UG", "XX"]),
       kind=st.sampled_from(["topk", "mass_center", "targeted", "random", "bogus"]),
       epsilon=st.one_of(numbers, st.floats(0, 1)), step_size=st.one_of(numbers, st.floats(1e-6, 0.1)),
       steps=st.one_of(st.integers(0, 2), numbers), k=st.one_of(st.integers(0, 12), numbers),
       beta=st.one_of(st.none(), numbers), restarts=st.one_of(st.integers(1, 2), numbers),
       target=st.one_of(st.none(), tensors(dims=(2, 3), max_side=3, batch=(1, 3))),
       weight=numbers, on_reject=st.sampled_from(["backtrack", "revert", "continue", "nope"]))
def test_attack_with_tiny_steps_returns_a_result_or_a_value_error(x, labels, method, kind, epsilon, step_size, steps,
                                                                  k, beta, restarts, target, weight, on_reject):
    if x.is_floating_point():
        x = x.clamp(0, 1)   # mostly valid images (NaN survive the clamp); out-of-range ones are tested below
    model = _model_for(x)
    y = torch.tensor(labels[: x.shape[0]] + [0] * max(0, x.shape[0] - len(labels)), dtype=torch.long)
    options = {"samples": 2} if method in ("SG", "UG") else {"steps": 2} if method == "IG" else None
    result = outcome(attacks.attack, model, x, y, method=method, kind=kind, epsilon=epsilon, step_size=step_size,
                     steps=steps, k=k, beta=beta, restarts=restarts, method_options=options, target_map=target,
                     map_weight=weight, on_reject=on_reject)
    if result is not None:
        assert result.x_adv.shape == x.shape and bool((result.linf <= float(epsilon) + 1e-3).all())


@SETTINGS
@given(x=tensors(dims=(1, 2, 3, 4, 5), max_side=3), y=st.one_of(st.none(), tensors(dims=(1, 2), batch=(0, 3))),
       num_classes=st.one_of(st.none(), st.integers(1, 5)))
def test_check_images_returns_a_result_or_a_value_error(x, y, num_classes):
    result = outcome(attacks.check_images, x, y, num_classes=num_classes)
    if result is not None:
        assert result.dtype == torch.long and result.shape == (x.shape[0],)


@FEW
@given(n=st.integers(1, 2), side=st.integers(2, 3), method=st.sampled_from(["SM", "IG", "SG", "UG"]),
       kind=st.sampled_from(["topk", "mass_center", "targeted", "random"]), epsilon=st.floats(0, 1),
       step_size=st.floats(1e-4, 0.1), steps=st.integers(0, 2), restarts=st.integers(1, 2), data=st.data(),
       bad=st.sampled_from([None, "epsilon", "step_size", "target_map", "x", "map_weight"]),
       special=st.sampled_from(SPECIAL), on_reject=st.sampled_from(["backtrack", "revert", "continue"]))
def test_attack_of_valid_inputs_gives_a_result_and_one_bad_value_a_value_error(n, side, method, kind, epsilon,
                                                                               step_size, steps, restarts, data, bad,
                                                                               special, on_reject):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
    x = torch.rand(n, 1, side, side, generator=g)
    model = _model_for(x).eval()
    y = model(x).argmax(1)
    k = data.draw(st.integers(1, side * side))
    target = torch.rand(side, side, generator=g) if kind == "targeted" else None
    kwargs = {"epsilon": epsilon, "step_size": step_size, "map_weight": 1.0}
    if bad in kwargs:
        kwargs[bad] = special
    elif bad == "x":
        x = x.clone()
        x[0, 0, 0, 0] = special
    elif bad == "target_map" and target is not None:
        target[0, 0] = special
    options = {"samples": 2} if method in ("SG", "UG") else {"steps": 2} if method == "IG" else None
    result = outcome(attacks.attack, model, x, y, method=method, kind=kind, steps=steps, k=k, restarts=restarts,
                     method_options=options, target_map=target, on_reject=on_reject, surrogates=[3.0], **kwargs)
    refused = bad is not None and not (bad == "target_map" and target is None)
    assert (result is None) == refused, "a NaN/inf value must be refused, a valid attack must run"
    if result is not None:
        assert result.x_adv.shape == x.shape and bool(torch.isfinite(result.x_adv).all())
        assert bool((result.linf <= epsilon + 1e-6).all()) and bool(result.label_kept.all())
