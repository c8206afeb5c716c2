"""Gradient attributions and the 2-D attribution map.

All four methods have the signature ``f(model, x, target, *, ..., create_graph=False) -> Tensor shaped like x``:

* :func:`saliency` (SM): ``grad_x f_c(x)``.
* :func:`integrated_gradients` (IG, Sundararajan et al. 2017, arXiv 1703.01365):
  ``(x - x0) * (1/m) sum_{i=1..m} grad f_c(x0 + (i/m)(x - x0))`` (right Riemann sum, baseline 0 by default).
* :func:`smoothgrad` (SG, Smilkov et al. 2017, arXiv 1706.03825): mean gradient over ``x + N(0, sigma^2 I)``
  with ``sigma = noise_level * (max x - min x)`` of each image.
* :func:`uniform_gradient` (UG, this paper): mean gradient over ``x + U[-r, r]^d``.

SG and UG are one code path (:func:`smooth_gradient`) with two noise samplers. ``target`` is a LongTensor
(N,), an int, or ``None`` for the model's prediction on ``x``. Everything runs on the device of ``x``; random
methods draw from the passed ``torch.Generator`` (on that device) for reproducibility. With
``create_graph=True`` the result is differentiable w.r.t. ``x`` (the attacks need this).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch import Tensor, nn

from smoothgeo.core.checks import check_inputs, eval_mode, finite_number, finite_tensor

__all__ = [
    "saliency", "integrated_gradients", "smoothgrad", "uniform_gradient", "smooth_gradient",
    "attribution_map", "map_of", "attribute", "METHODS", "INCLUDES_INPUT", "resolve_target", "make_generator",
    "gaussian_sampler", "uniform_sampler",
]


def make_generator(device, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def resolve_target(model: nn.Module, x: Tensor, target) -> Tensor:
    """Turn ``target`` (None / int / sequence / tensor) into a LongTensor (N,) on ``x.device``."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a batched tensor (N, ...), got {type(x).__name__} "
                         f"with shape {tuple(getattr(x, 'shape', ()))}")
    n = x.shape[0]
    if target is None:
        check_inputs(x, model)   # the model runs on x
        with torch.no_grad(), eval_mode(model):
            return model(x.detach()).argmax(1)
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"target holds class index {target}; class indices are >= 0")
        return torch.full((n,), target, dtype=torch.long, device=x.device)
    target = torch.as_tensor(target, device=x.device)
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    target = target.long().reshape(-1)
    if target.numel() != n:
        raise ValueError(f"target has {target.numel()} entries but x has batch size {n}; pass one class per image")
    if target.numel() and int(target.min()) < 0:
        raise ValueError(f"target holds class index {int(target.min())}; class indices are >= 0")
    return target


#: most path points (IG) or noise samples (SG, UG) per image: more is a typo, not a setting (1e300 would try to
#: allocate them all)
MAX_POINTS = 100_000


def _count(value, name: str) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer in [1, MAX_POINTS] (an integral float
    passes)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 1
            or int(value) != value):
        raise ValueError(f"{name} must be >= 1 (an integer), got {value!r}")
    if value > MAX_POINTS:
        raise ValueError(f"{name} must be at most {MAX_POINTS}, got {value!r}")
    return int(value)


def _chunk(chunk_size, total: int) -> int:
    """How many path points or noise copies go through the model at once: ``total`` for None, else at least 1."""
    if chunk_size is None:
        return total
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Real) or not math.isfinite(chunk_size):
        raise ValueError(f"chunk_size must be None or a finite number (points per model call), got {chunk_size!r}")
    return max(1, int(chunk_size))


def _gradient(model: nn.Module, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
    """``grad_x sum_i f_{target_i}(x_i)``: rows are independent, so this is the per-image gradient."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if target.numel() and int(target.max()) >= logits.shape[1]:
            raise ValueError(f"target holds class index {int(target.max())} but the model has {logits.shape[1]} "
                             f"classes (0..{logits.shape[1] - 1})")
        selected = logits.gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(selected, x, create_graph=create_graph)
    return grad


def saliency(model: nn.Module, x: Tensor, target=None, *, create_graph: bool = False) -> Tensor:
    """Saliency map ``grad_x f_c(x)`` (Simonyan et al. 2013, arXiv 1312.6034).

    Args:
        model: maps (N, ...) inputs to (N, classes) logits.
        x: (N, C, H, W) inputs (any shape with batch first).
        target: class per image (N,), an int, or None for the prediction.
        create_graph: keep the graph so the result can be differentiated w.r.t. ``x``.
    Returns:
        Tensor shaped like ``x``.
    """
    check_inputs(x, model)
    with eval_mode(model):
        return _gradient(model, x, resolve_target(model, x, target), create_graph)


def integrated_gradients(model: nn.Module, x: Tensor, target=None, *, baseline: Tensor | float | None = None,
                         steps: int = 50, chunk_size: int | None = None, create_graph: bool = False) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017, arXiv 1703.01365), right Riemann sum.

    Args:
        x: (N, ...) inputs.
        target: class per image, an int, or None for the prediction on ``x``.
        baseline: x0, a tensor broadcastable to ``x`` or a float; default 0 (black image).
        steps: m, the number of points i/m, i = 1..m, on the path.
        chunk_size: how many path points go through the model at once (memory); None = all of them.
        create_graph: keep the graph for differentiation w.r.t. ``x``.
    Returns:
        ``(x - x0) * mean_i grad f_c(x0 + (i/m)(x - x0))``, shaped like ``x``. Sums to about
        ``f_c(x) - f_c(x0)`` (completeness).
    """
    check_inputs(x, model)
    steps = _count(steps, "IG steps")
    x0 = torch.zeros_like(x) if baseline is None else finite_tensor(
        torch.as_tensor(baseline, dtype=x.dtype, device=x.device), "IG baseline")
    try:
        x0 = x0.expand_as(x)
    except RuntimeError:
        raise ValueError(f"IG baseline of shape {tuple(x0.shape)} does not broadcast to x of shape "
                         f"{tuple(x.shape)}") from None
    with eval_mode(model):
        return _integrated_gradients(model, x, resolve_target(model, x, target), x0, steps, chunk_size,
                                     create_graph)


def _integrated_gradients(model, x, target, x0, steps, chunk_size, create_graph) -> Tensor:
    diff = x - x0
    alphas = torch.arange(1, steps + 1, device=x.device, dtype=x.dtype) / steps
    chunk = _chunk(chunk_size, steps)
    total = torch.zeros_like(x)
    view = (-1,) + (1,) * x.dim()
    for start in range(0, steps, chunk):
        a = alphas[start:start + chunk].view(view)  # (c, 1, 1, ...)
        points = (x0.unsqueeze(0) + a * diff.unsqueeze(0)).reshape(-1, *x.shape[1:])
        grads = _gradient(model, points, target.repeat(a.shape[0]), create_graph)
        total = total + grads.view(a.shape[0], *x.shape).sum(0)
    return diff * total / steps


NoiseSampler = Callable[[Tensor, int, torch.Generator | None], Tensor]


def smooth_gradient(model: nn.Module, x: Tensor, target=None, *, sampler: NoiseSampler, samples: int = 50,
                    chunk_size: int | None = None, generator: torch.Generator | None = None,
                    create_graph: bool = False) -> Tensor:
    """Mean saliency over noisy copies ``x + z``: the gradient of the model convolved with the noise density.

    Args:
        sampler: ``sampler(x, n, generator) -> (n, *x.shape)`` noise. All noise is drawn up front, so the
            result does not depend on ``chunk_size``.
        samples: n, the number of noisy copies.
        chunk_size: how many noisy copies go through the model at once; None = all.
    Returns:
        ``(1/n) sum_i grad f_c(x + z_i)``, shaped like ``x``.
    """
    check_inputs(x, model)
    samples = _count(samples, "number of noise samples")
    with eval_mode(model):
        return _smooth_gradient(model, x, resolve_target(model, x, target), sampler, samples, chunk_size,
                                generator, create_graph)


def _smooth_gradient(model, x, target, sampler, samples, chunk_size, generator, create_graph) -> Tensor:
    noise = sampler(x, samples, generator)
    chunk = _chunk(chunk_size, samples)
    total = torch.zeros_like(x)
    for start in range(0, samples, chunk):
        z = noise[start:start + chunk]
        points = (x.unsqueeze(0) + z).reshape(-1, *x.shape[1:])
        grads = _gradient(model, points, target.repeat(z.shape[0]), create_graph)
        total = total + grads.view(z.shape[0], *x.shape).sum(0)
    return total / samples


def gaussian_sampler(noise_level: float) -> NoiseSampler:
    """N(0, sigma^2 I) with ``sigma = noise_level * (max x - min x)`` per image (SmoothGrad's convention)."""
    if finite_number(noise_level, "SmoothGrad noise_level") < 0:
        raise ValueError(f"SmoothGrad noise_level must be >= 0, got {noise_level}")

    def sample(x: Tensor, n: int, generator):
        flat = x.detach().flatten(1)
        sigma = noise_level * (flat.max(1).values - flat.min(1).values)
        sigma = sigma.view(1, -1, *([1] * (x.dim() - 1)))
        return sigma * torch.randn((n, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return sample


def uniform_sampler(radius: float) -> NoiseSampler:
    """U[-r, r]^d noise (the paper's Uniform Gradient), r in pixel units."""
    if finite_number(radius, "Uniform Gradient radius") < 0:
        raise ValueError(f"Uniform Gradient radius must be >= 0, got {radius}")

    def sample(x: Tensor, n: int, generator):
        u = torch.rand((n, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * radius
    return sample


def smoothgrad(model: nn.Module, x: Tensor, target=None, *, noise_level: float = 0.1, samples: int = 50,
               chunk_size: int | None = None, generator: torch.Generator | None = None,
               create_graph: bool = False) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017, arXiv 1706.03825).

    Args:
        noise_level: sigma as a fraction of each image's value range, ``sigma = noise_level * (max x - min x)``.
            This is the standard deviation (not the variance) of the noise.
        samples, chunk_size, generator, create_graph: see :func:`smooth_gradient`.
    Returns:
        Tensor shaped like ``x``.
    """
    return smooth_gradient(model, x, target, sampler=gaussian_sampler(noise_level), samples=samples,
                           chunk_size=chunk_size, generator=generator, create_graph=create_graph)


def uniform_gradient(model: nn.Module, x: Tensor, target=None, *, radius: float = 0.1, samples: int = 50,
                     chunk_size: int | None = None, generator: torch.Generator | None = None,
                     create_graph: bool = False) -> Tensor:
    """Uniform Gradient (Wang et al. 2020, arXiv 2006.06643): mean gradient over ``x + U[-r, r]^d``.

    Args:
        radius: r, half-width of the uniform noise, in pixel units (inputs in [0, 1]).
        samples, chunk_size, generator, create_graph: see :func:`smooth_gradient`.
    Returns:
        Tensor shaped like ``x``.
    """
    return smooth_gradient(model, x, target, sampler=uniform_sampler(radius), samples=samples,
                           chunk_size=chunk_size, generator=generator, create_graph=create_graph)


METHODS: dict[str, Callable[..., Tensor]] = {
    "SM": saliency, "IG": integrated_gradients, "SG": smoothgrad, "UG": uniform_gradient,
}
#: methods whose raw attribution already contains the (x - x0) factor
INCLUDES_INPUT = {"IG"}
_RANDOM = {"SG", "UG"}


def attribute(method: str, model: nn.Module, x: Tensor, target=None, *, generator=None,
              create_graph: bool = False, **options) -> Tensor:
    """Dispatch to one of ``METHODS`` by name ("SM", "IG", "SG", "UG") with its options.

    ``generator`` is passed to the random methods only, so callers can treat all four alike.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {sorted(METHODS)}")
    if method in _RANDOM:
        options["generator"] = generator
    return METHODS[method](model, x, target, create_graph=create_graph, **options)


def attribution_map(attr: Tensor, x: Tensor | None = None, *, times_input: bool = True,
                    eps: float = 1e-12) -> Tensor:
    """The normalised 2-D map every metric uses (the convention of Ghorbani et al.'s reference code).

    Per pixel, ``sum_channels |attr * x|`` (gradient x input) if ``times_input`` else ``sum_channels |attr|``,
    then scaled so each map sums to H*W. Pass ``times_input=False`` for IG, whose attribution already contains
    the (x - x0) factor (see :func:`map_of`).

    Args:
        attr: (N, C, H, W) raw attribution.
        x: (N, C, H, W) input; required when ``times_input``.
    Returns:
        (N, H, W) non-negative maps, each summing to H*W (an all-zero map stays zero).
    """
    if not isinstance(attr, Tensor) or attr.dim() != 4:
        raise ValueError(f"attribution_map expects (N, C, H, W) attributions, got "
                         f"{type(attr).__name__} of shape {tuple(getattr(attr, 'shape', ()))}")
    if attr.dtype == torch.bool or attr.is_complex():
        raise ValueError(f"attribution_map expects real numeric attributions, got dtype {attr.dtype}")
    if times_input:
        if x is None:
            raise ValueError("attribution_map(times_input=True) needs the input x")
        if not isinstance(x, Tensor) or x.is_complex():
            raise ValueError(f"attribution_map needs x as a real tensor, got {type(x).__name__}")
        if x.shape != attr.shape:
            raise ValueError(f"x shape {tuple(x.shape)} differs from attribution shape {tuple(attr.shape)}")
        attr = attr * x
    m = attr.abs().sum(1)
    h, w = m.shape[-2:]
    return m * (h * w) / (m.flatten(1).sum(1).view(-1, 1, 1) + eps)


def map_of(method: str, attr: Tensor, x: Tensor, *, convention: str = "grad_times_input") -> Tensor:
    """The 2-D map of ``method``'s raw attribution under a named convention.

    Conventions:
        ``"grad_times_input"`` (default, the reference code's): |a * x| summed over channels for SM/SG/UG,
            |a| for IG (already multiplied by x - x0).
        ``"abs"``: |a| summed over channels for every method (plain gradient magnitude).
    """
    if convention == "grad_times_input":
        return attribution_map(attr, x, times_input=method not in INCLUDES_INPUT)
    if convention == "abs":
        return attribution_map(attr, x, times_input=False)
    raise ValueError(f"unknown map convention {convention!r}; choose 'grad_times_input' or 'abs'")


