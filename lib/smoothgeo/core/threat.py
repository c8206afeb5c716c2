"""The threat model of the attribution attacks: the ball a perturbation lives in, its steps and its noise.

:func:`smoothgeo.core.attacks.attack` takes ``norm``; this module holds everything that depends on it, so the
attack loop is the same for both balls:

============  ==========================================  ==============================================
operation     ``"linf"`` (Ghorbani et al., the default)    ``"l2"``
============  ==========================================  ==============================================
projection    clip to ``[x - eps, x + eps] ∩ [0, 1]``      scale ``z - x`` to norm ``<= eps``, then clip
                                                          to ``[0, 1]``
step          ``alpha * sign(g)``                          ``alpha * g / ||g||_2`` (per image)
random start  ``x + U[-eps, eps]^d``                       ``x + eps * u^(1/d) * v``, v uniform on the unit
                                                          sphere, u ~ U[0, 1] (uniform in the ball)
noise draw    ``x + eps * s``, s uniform in {-1, +1}^d     ``x + eps * v``, v uniform on the unit sphere
============  ==========================================  ==============================================

(``g`` is the descent direction, minus the gradient of the attack loss.) The noise draw sits on the ball's
boundary in both cases: the random floor spends the whole budget, as the attack may. Clipping to [0, 1] after
the L2 scaling keeps the point in the ball: the clipped pixel moves towards ``x``, never away from it.

For L-inf the operations are exactly the ones the attack used before ``norm`` existed (same draws from the
same generator, in the same order), so L-inf results are unchanged.
"""
from __future__ import annotations

import math

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgeo.core.checks import eval_mode

__all__ = ["NORMS", "Threat", "check_norm", "random_sign", "size", "pgd_linf", "robust_correct"]

NORMS = ("linf", "l2")


def check_norm(norm: str, epsilon: float, n_features: int) -> None:
    """ValueError unless ``norm`` is known and ``epsilon`` lies in its ball's meaningful range."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; norm must be one of {list(NORMS)}")
    top = 1.0 if norm == "linf" else math.sqrt(n_features)
    if not 0 <= epsilon <= top:
        unit = "L-inf radius in pixel units" if norm == "linf" else f"L2 radius; sqrt(d) = {top:.3g} is the diagonal"
        raise ValueError(f"epsilon must be in [0, {top:.6g}] for norm={norm!r} ({unit}), got {epsilon}")


def _per_image_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view((-1,) + (1,) * (t.dim() - 1))


def random_sign(shape, generator, device, dtype) -> Tensor:
    """Uniform draws from {-1, +1}."""
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


def _unit_sphere(shape, generator, device, dtype) -> Tensor:
    v = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return v / _per_image_norm(v).clamp_min(1e-12)


class Threat:
    """The ball of radius ``epsilon`` in ``norm`` around the clean batch ``x``, intersected with [0, 1]."""

    def __init__(self, x: Tensor, epsilon: float, norm: str = "linf"):
        check_norm(norm, epsilon, x[0].numel())
        self.x, self.epsilon, self.norm = x, float(epsilon), norm
        self.lo, self.hi = (x - epsilon).clamp(0, 1), (x + epsilon).clamp(0, 1)

    def project(self, z: Tensor) -> Tensor:
        if self.norm == "linf":
            return torch.minimum(torch.maximum(z, self.lo), self.hi)
        delta = z - self.x
        scale = (self.epsilon / _per_image_norm(delta).clamp_min(1e-12)).clamp_max(1.0)
        return (self.x + delta * scale).clamp(0, 1)

    def step(self, g: Tensor) -> Tensor:
        """The unit step along the descent direction ``g`` (sign for L-inf, L2-normalised for L2)."""
        if self.norm == "linf":
            return g.sign()
        return g / _per_image_norm(g).clamp_min(1e-30)

    def fallback(self, generator) -> Tensor:
        """A random unit step, for images whose attack direction is exactly zero."""
        if self.norm == "linf":
            return random_sign(self.x.shape, generator, self.x.device, self.x.dtype)
        return _unit_sphere(self.x.shape, generator, self.x.device, self.x.dtype)

    def random_start(self, generator) -> Tensor:
        """A uniform random point of the ball (before projection to [0, 1])."""
        x, eps = self.x, self.epsilon
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return x + (2 * u - 1) * eps
        v = _unit_sphere(x.shape, generator, x.device, x.dtype)
        u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
        return x + eps * u.pow(1.0 / x[0].numel()) * v

    def noise(self, generator) -> Tensor:
        """A random point on the ball's boundary (before projection to [0, 1]): the random floor's draw."""
        if self.norm == "linf":
            return self.x + self.epsilon * random_sign(self.x.shape, generator, self.x.device, self.x.dtype)
        return self.x + self.epsilon * _unit_sphere(self.x.shape, generator, self.x.device, self.x.dtype)


def size(delta: Tensor, norm: str) -> Tensor:
    """Per-image size of ``delta`` in ``norm``."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


# ------------------------------------------------------------------------------ attacks on the prediction
def pgd_linf(model: nn.Module, x: Tensor, objective: Callable[[nn.Module, Tensor], Tensor], *, epsilon: float,
             step_size: float, steps: int, random_start: bool = True,
             generator: torch.Generator | None = None) -> Tensor:
    """Maximise ``objective(model, x').sum()`` over ``B_inf(x, epsilon) ∩ [0, 1]`` by signed-gradient ascent.

    ``x'_{t+1} = Proj(x'_t + step_size * sign(grad))``, from a uniform random start in the ball (or ``x``).
    The model runs in eval mode (restored afterwards); no gradient reaches the weights.

    Returns:
        The last iterate, detached, shaped like ``x`` (always inside the ball and [0, 1]).
    """
    x = x.detach()
    lo, hi = (x - epsilon).clamp(0, 1), (x + epsilon).clamp(0, 1)
    if random_start:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        xa = torch.min(torch.max(x + (2 * u - 1) * epsilon, lo), hi)
    else:
        xa = x.clone()
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            xa = xa.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(model, xa).sum(), xa)
            xa = torch.min(torch.max(xa.detach() + step_size * grad.sign(), lo), hi)
    return xa.detach()


def robust_correct(model: nn.Module, x: Tensor, y: Tensor, *, epsilon: float, steps: int = 20,
                   step_size: float | None = None, restarts: int = 1, generator: torch.Generator | None = None,
                   chunk_size: int | None = None) -> Tensor:
    """(N,) bool: the prediction stays ``y`` under L-inf PGD on the cross-entropy (Madry et al.'s evaluation).

    ``restarts`` runs, each from a uniform random start in the ball (``steps`` signed steps of ``step_size``,
    default ``2.5 * epsilon / steps``); an image counts as robust only if every run keeps the label (and the
    clean image is classified correctly). ``epsilon = 0`` gives clean accuracy.
    """
    if step_size is None:
        step_size = 2.5 * epsilon / max(steps, 1)
    ce = lambda m, z, yy: F.cross_entropy(m(z), yy, reduction="none")  # noqa: E731
    out = []
    size_ = x.shape[0] if chunk_size is None else int(chunk_size)
    with eval_mode(model):
        for s in range(0, x.shape[0], size_):
            xs, ys = x[s:s + size_], y[s:s + size_]
            with torch.no_grad():
                ok = model(xs).argmax(1) == ys
            for _ in range(restarts if epsilon > 0 else 0):
                xa = pgd_linf(model, xs, lambda m, z: ce(m, z, ys), epsilon=epsilon, step_size=step_size,
                              steps=steps, random_start=True, generator=generator)
                with torch.no_grad():
                    ok &= model(xa).argmax(1) == ys
            out.append(ok)
    return torch.cat(out)
