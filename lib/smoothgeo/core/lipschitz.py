"""Smoothness of the gradient in the input: empirical Lipschitz ratios and the bound test (RQ2).

If the gradient of the explained logit is L-Lipschitz, a gradient attribution moves by at most ``L * ||delta||``
under a perturbation ``delta``. This module estimates L on neighbours drawn independently of any attack and
tests the bound against what an attack actually did:

* :func:`gradient_lipschitz`: ``max ||grad f_c(x) - grad f_c(x')|| / ||x - x'||`` over random or adversarial
  neighbours ``x'`` in the L-inf ball.
* :func:`lipschitz_measures`: the same ratio, relative to ``||grad f_c(x)||``, and for the normalised map.
* :func:`lipschitz_at_radius`: the ratios on random sign directions scaled to a given L2 radius per image, so L
  is estimated at the size of the perturbation it is then applied to (the attack's ``||delta||``).
* :func:`bound_test`: the realised change of the gradient and of the map (L2, top-k, Kendall) under a
  perturbation, against ``L * ||delta||``.

All measurements run the model in eval mode (its previous mode is restored) on the device of ``x``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from smoothgeo.core.attributions import resolve_target, saliency
from smoothgeo.core.geometry import evaluating
from smoothgeo.core.metrics import kendall_tau, topk_intersection
from smoothgeo.core.models import softplus_copy

__all__ = ["gradient_lipschitz", "lipschitz_measures", "lipschitz_at_radius", "bound_test"]


def _ratio(model: nn.Module, x: Tensor, g0: Tensor, xn: Tensor, target: Tensor) -> Tensor:
    """``||grad f(x) - grad f(x')|| / ||x - x'||`` per row (x, g0, target repeated to match ``xn``)."""
    gn = saliency(model, xn, target)
    dx = (xn - x).flatten(1).norm(dim=1)
    dg = (gn - g0).flatten(1).norm(dim=1)
    return torch.where(dx > 0, dg / dx.clamp_min(1e-30), torch.zeros_like(dx))


def _lipschitz_chunk(model, surrogate, x, target, noise, *, epsilon, steps, step_size) -> Tensor:
    """Max ratio per image of ``x`` (n, ...) over ``noise`` (samples, n, ...) starts (+ PGD if surrogate)."""
    samples, n = noise.shape[:2]
    g0 = saliency(model, x, target).detach()
    rep = lambda t: t.repeat(samples, *([1] * (t.dim() - 1)))  # noqa: E731  (sample-major rows)
    xr, g0r, tr = rep(x), rep(g0), target.repeat(samples)
    xn = (xr + noise.reshape(xr.shape)).clamp(0, 1)
    best = _ratio(model, xr, g0r, xn, tr).detach()
    if surrogate is not None and steps > 0:
        gs0 = saliency(surrogate, xr, tr).detach()
        for _ in range(steps):
            xn = xn.detach().requires_grad_(True)
            gs = saliency(surrogate, xn, tr, create_graph=True)
            objective = (gs - gs0).pow(2).sum()
            direction = (torch.autograd.grad(objective, xn, allow_unused=True)[0]
                         if objective.requires_grad else None)
            if direction is None:  # the gradient does not depend on x' (linear model): nothing to climb
                break
            xn = torch.min(torch.max(xn.detach() + step_size * direction.sign(), xr - epsilon), xr + epsilon)
            xn = xn.clamp(0, 1)
            best = torch.maximum(best, _ratio(model, xr, g0r, xn, tr).detach())
    return best.view(samples, n).amax(0)


def gradient_lipschitz(model: nn.Module, x: Tensor, y=None, *, epsilon: float, samples: int = 10,
                       neighbours: str = "random", steps: int = 10, step_size: float | None = None,
                       beta: float = 10.0, seed: int = 0, chunk_size: int | None = None) -> Tensor:
    """Empirical Lipschitz ratio of the gradient, ``max_{x'} ||grad f_c(x) - grad f_c(x')||_2 / ||x - x'||_2``.

    ``f_c`` is the logit of class ``c`` (the gradient a saliency map shows), with ``c`` fixed to ``y`` or, when
    ``y`` is None, to the model's prediction on the clean ``x`` (the class every attribution explains); the
    same class is used at ``x'``. Neighbours lie in ``B_inf(x, epsilon)`` intersected with [0, 1]:

    * ``"random"``: ``samples`` points ``clip(x + U[-eps, eps]^d, 0, 1)``.
    * ``"adversarial"``: the same ``samples`` random points as starts, each followed by ``steps`` signed-gradient
      (PGD) steps that maximise ``||grad g_c(x) - grad g_c(x')||^2``, with ``g`` the model's Softplus(``beta``)
      copy when it has ReLU modules (a ReLU network's gradient is piecewise constant, so its own second
      derivative gives no direction) and the model itself otherwise. The ratio is always measured on ``model``
      itself, at every iterate including the start, and the largest is kept (so with the same seed the
      adversarial estimate is never below the random one).

    Args:
        model: maps (N, ...) inputs to (N, C) logits; evaluated in eval mode (mode restored afterwards).
        x: (N, ...) inputs in [0, 1].
        y: class per image (N,), an int, or None for the prediction.
        epsilon: L-inf radius of the neighbourhood (pixel units).
        samples: random neighbours (or adversarial restarts) per image.
        steps, step_size: PGD steps and step size (default epsilon / 4) for ``"adversarial"``.
        beta: Softplus beta of the surrogate.
        seed: seed of the random neighbours / starts (all drawn up front: the result does not depend on
            ``chunk_size``).
        chunk_size: images per pass (each pass handles ``samples * chunk_size`` points); None = all.
    Returns:
        (N,) ratio, on the device of ``x``. Zero for a linear model (constant gradient).
    """
    if neighbours not in ("random", "adversarial"):
        raise ValueError(f"unknown neighbours {neighbours!r}; choose 'random' or 'adversarial'")
    if epsilon <= 0 or samples < 1 or steps < 0:
        raise ValueError(f"need epsilon > 0, samples >= 1, steps >= 0; got epsilon={epsilon}, samples={samples}, "
                         f"steps={steps}")
    step_size = epsilon / 4 if step_size is None else step_size
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    x = x.detach()
    noise = (2 * torch.rand((samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype) - 1) * epsilon
    chunk = x.shape[0] if chunk_size is None else max(1, int(chunk_size))
    with evaluating(model):
        target = resolve_target(model, x, y)
        surrogate = None
        if neighbours == "adversarial":
            has_relu = any(isinstance(m, nn.ReLU) for m in model.modules())
            surrogate = softplus_copy(model, beta).eval() if has_relu else model
        out = [_lipschitz_chunk(model, surrogate, x[s:s + chunk], target[s:s + chunk], noise[:, s:s + chunk],
                                epsilon=epsilon, steps=steps, step_size=step_size)
               for s in range(0, x.shape[0], chunk)]
    return torch.cat(out)


def _sm_map(g: Tensor, x: Tensor, convention: str) -> Tensor:
    from smoothgeo.core.attributions import map_of
    return map_of("SM", g, x, convention=convention)


def _three_ratios(model, x, g0, m0, xn, target, convention) -> tuple[Tensor, Tensor, Tensor]:
    gn = saliency(model, xn, target).detach()
    dx = (xn - x).flatten(1).norm(dim=1)
    dg = (gn - g0).flatten(1).norm(dim=1)
    dm = (_sm_map(gn, xn, convention) - m0).flatten(1).norm(dim=1)
    g0n = g0.flatten(1).norm(dim=1)
    ok = dx > 0
    zero = torch.zeros_like(dx)
    raw = torch.where(ok, dg / dx.clamp_min(1e-30), zero)
    rel = torch.where(ok & (g0n > 0), raw / g0n.clamp_min(1e-30), zero)
    return raw, rel, torch.where(ok, dm / dx.clamp_min(1e-30), zero)


def lipschitz_measures(model: nn.Module, x: Tensor, y=None, *, epsilon: float, samples: int = 8,
                       neighbours: str = "random", steps: int = 10, step_size: float | None = None,
                       beta: float = 10.0, seed: int, convention: str = "grad_times_input",
                       chunk_size: int | None = None) -> dict[str, Tensor]:
    """Lipschitz ratios of the gradient, of the gradient relative to its norm, and of the normalised map.

    Over neighbours ``x'`` in ``B_inf(x, epsilon) ∩ [0,1]`` drawn from their *own* seed (independent of any
    attack), per image, each maximised separately over the same neighbours:

    * ``gradient``: ``max ||g(x') - g(x)|| / ||x' - x||`` with ``g = grad f_c`` (as :func:`gradient_lipschitz`);
      scales with the logits (x t).
    * ``relative_gradient``: the same divided by ``||g(x)||``: invariant to the logit scale t (both scale by t).
    * ``map``: ``max ||m(x') - m(x)|| / ||x' - x||`` with ``m`` the normalised 2-D SM map of ``convention``
      (the map every metric uses; it sums to H*W, so the logit scale cancels exactly).

    ``neighbours="random"``: ``samples`` uniform points in the ball; ``"adversarial"``: each followed by
    ``steps`` signed-gradient steps maximising ``||grad g_c(x') - grad g_c(x)||^2`` on the Softplus(``beta``)
    copy of a ReLU model (the model itself otherwise), every iterate measured on ``model``.

    Returns:
        dict ``{"gradient", "relative_gradient", "map"}`` of (N,) tensors.
    """
    if neighbours not in ("random", "adversarial"):
        raise ValueError(f"unknown neighbours {neighbours!r}; choose 'random' or 'adversarial'")
    if epsilon <= 0 or samples < 1 or steps < 0:
        raise ValueError(f"need epsilon > 0, samples >= 1, steps >= 0; got epsilon={epsilon}, samples={samples}, "
                         f"steps={steps}")
    if x.dim() != 4:
        raise ValueError(f"lipschitz_measures needs images (N, C, H, W) for the map, got shape {tuple(x.shape)}")
    step_size = epsilon / 4 if step_size is None else step_size
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    x = x.detach()
    noise = (2 * torch.rand((samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype) - 1) * epsilon
    chunk = x.shape[0] if chunk_size is None else max(1, int(chunk_size))
    out = {"gradient": [], "relative_gradient": [], "map": []}
    with evaluating(model):
        target = resolve_target(model, x, y)
        surrogate = None
        if neighbours == "adversarial" and steps > 0:
            has_relu = any(isinstance(m, nn.ReLU) for m in model.modules())
            surrogate = softplus_copy(model, beta).eval() if has_relu else model
        for s in range(0, x.shape[0], chunk):
            xs, ts, ns = x[s:s + chunk], target[s:s + chunk], noise[:, s:s + chunk]
            k, n = ns.shape[:2]
            rep = lambda t: t.repeat(k, *([1] * (t.dim() - 1)))  # noqa: E731  (sample-major rows)
            g0 = saliency(model, xs, ts).detach()
            xr, g0r, tr = rep(xs), rep(g0), ts.repeat(k)
            m0r = _sm_map(g0r, xr, convention)
            xn = (xr + ns.reshape(xr.shape)).clamp(0, 1)
            best = list(_three_ratios(model, xr, g0r, m0r, xn, tr, convention))
            if surrogate is not None:
                gs0 = saliency(surrogate, xr, tr).detach()
                for _ in range(steps):
                    xn = xn.detach().requires_grad_(True)
                    gs = saliency(surrogate, xn, tr, create_graph=True)
                    objective = (gs - gs0).pow(2).sum()
                    if not objective.requires_grad:
                        break
                    direction = torch.autograd.grad(objective, xn, allow_unused=True)[0]
                    if direction is None:
                        break
                    xn = torch.min(torch.max(xn.detach() + step_size * direction.sign(), xr - epsilon), xr + epsilon)
                    xn = xn.clamp(0, 1)
                    best = [torch.maximum(b, r) for b, r in zip(best, _three_ratios(model, xr, g0r, m0r, xn, tr,
                                                                                      convention))]
            for key, b in zip(out, best):
                out[key].append(b.view(k, n).amax(0))
    return {k: torch.cat(v) for k, v in out.items()}


def lipschitz_at_radius(model: nn.Module, x: Tensor, radius: Tensor, y=None, *, samples: int = 8, seed: int,
                        convention: str = "grad_times_input") -> dict[str, Tensor]:
    """Lipschitz ratios of the gradient and of the map on random sign directions of L2 norm ``radius``.

    Per image ``i``, ``samples`` neighbours ``x' = clip(x + radius_i * s / sqrt(d), 0, 1)`` with ``s`` uniform
    in {-1, 1}^d (the shape of a signed-gradient attack's steps), drawn from ``seed`` (independent of any
    attack). Estimating L at the attack's own ``||delta||`` makes ``L * ||delta||`` a like-for-like prediction;
    a constant measured at a smaller radius (e.g. uniform noise in the L-inf ball, norm about eps * sqrt(d / 3))
    and applied at a larger one makes the bound easy to satisfy.

    Returns:
        dict ``{"gradient", "relative_gradient", "map"}`` of (N,) maxima over the samples (0 where radius is 0).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    radius = torch.as_tensor(radius, dtype=x.dtype, device=x.device).flatten()
    if radius.numel() != x.shape[0] or not torch.isfinite(radius).all() or (radius < 0).any():
        raise ValueError(f"radius must hold one finite value >= 0 per image ({x.shape[0]}), got {radius.numel()}")
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    x = x.detach()
    d = x[0].numel()
    best = None
    with evaluating(model):
        target = resolve_target(model, x, y)
        g0 = saliency(model, x, target).detach()
        m0 = _sm_map(g0, x, convention)
        for _ in range(samples):
            sign = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
            xn = (x + sign * (radius / d ** 0.5).view(-1, *([1] * (x.dim() - 1)))).clamp(0, 1)
            ratios = _three_ratios(model, x, g0, m0, xn, target, convention)
            best = list(ratios) if best is None else [torch.maximum(b, r) for b, r in zip(best, ratios)]
    return dict(zip(("gradient", "relative_gradient", "map"), best))


def bound_test(model: nn.Module, x: Tensor, x_adv: Tensor, lipschitz: Tensor, y=None, *,
               map_lipschitz: Tensor | None = None, convention: str = "grad_times_input",
               k: int | None = None) -> dict[str, Tensor]:
    """The realised change of the gradient and of the map under a perturbation against its prediction.

    For clean ``x``, perturbed ``x_adv`` (e.g. an attribution attack's output) and a per-image gradient-Lipschitz
    estimate ``lipschitz`` made on *independent* neighbours (:func:`lipschitz_measures`, its own seed: not the
    attack's iterates, so the test is not circular), with ``g = grad f_c`` at the clean prediction ``c``:

    * ``delta_norm`` ||x_adv - x||_2; ``grad_change`` ||g(x_adv) - g(x)||; ``predicted_grad_change``
      L * ||x_adv - x||; ``within_bound`` grad_change <= predicted (1.0 / 0.0);
    * ``relative_grad_change`` grad_change / ||g(x)|| (logit-scale invariant);
    * ``map_change`` ||m(x_adv) - m(x)||_2 of the normalised SM map (what the metrics see); with
      ``map_lipschitz``: ``predicted_map_change`` = L_map * ||delta|| and ``map_within_bound``;
    * with ``k``: ``topk_change`` 1 - top-k intersection and ``kendall_change`` 1 - Kendall tau of the two maps
      (the outcomes the robustness claims are about, beside the L2 change the bound speaks of).

    The measure stage (:mod:`smoothgeo.pipeline.measure`) writes each entry as a ``bound_<name>`` column of the
    measure tables; the bound claims (:mod:`smoothgeo.analysis.claims`) then test how well the prediction *ranks*
    the realised changes across images: the within-model correlation of ``bound_predicted_grad_change`` with
    ``bound_topk_change``, ``bound_kendall_change`` and ``bound_map_change``
    (:func:`smoothgeo.analysis.seed_level.within_correlation`).
    Returns:
        dict of (N,) tensors.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_adv {tuple(x_adv.shape)} differ in shape; pass matching images")
    with evaluating(model):
        target = resolve_target(model, x, y)
        g0 = saliency(model, x, target).detach()
        g1 = saliency(model, x_adv, target).detach()
    delta = (x_adv - x).flatten(1).norm(dim=1)
    dg = (g1 - g0).flatten(1).norm(dim=1)
    pred = lipschitz.to(delta) * delta
    out = {"delta_norm": delta, "grad_change": dg, "predicted_grad_change": pred,
           "within_bound": (dg <= pred * (1 + 1e-6)).to(delta.dtype),
           "relative_grad_change": dg / g0.flatten(1).norm(dim=1).clamp_min(1e-30),
           "map_change": (_sm_map(g1, x_adv, convention) - _sm_map(g0, x, convention)).flatten(1).norm(dim=1)}
    if k is not None:
        m0, m1 = _sm_map(g0, x, convention), _sm_map(g1, x_adv, convention)
        out["topk_change"] = 1 - topk_intersection(m0, m1, k).to(delta)
        out["kendall_change"] = 1 - kendall_tau(m0, m1).to(delta)
    if map_lipschitz is not None:
        out["predicted_map_change"] = map_lipschitz.to(delta) * delta
        out["map_within_bound"] = (out["map_change"] <= out["predicted_map_change"] * (1 + 1e-6)).to(delta.dtype)
    return out
