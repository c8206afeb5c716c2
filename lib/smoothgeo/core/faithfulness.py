"""Does a map still explain the model? Deletion / insertion curves and infidelity.

A map can be stable because it is blurry; these measures say whether it still points at what the model uses.

* **Deletion and insertion** (Petsiuk et al. 2018, RISE, arXiv 1806.07421): order the pixels by the 2-D map,
  most important first. *Deletion* replaces the top fraction ``t`` of pixels by ``baseline`` (every channel)
  and records the softmax probability of the class, for ``t = 0, 1/S, ..., 1``; *insertion* starts from the
  baseline image and reveals the top fraction ``t``. The area under each curve (trapezoid rule over ``t`` in
  [0, 1]) summarises it: a faithful map has a *low* deletion AUC (the probability collapses once its top
  pixels are gone) and a *high* insertion AUC. Both are also reported relative to the clean probability
  (``*_relative``: the curve divided by ``p(x)``) so models of different confidence can be compared.
* **Infidelity** (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations", arXiv 1901.09392):
  ``INFD(phi, f, x) = E_I[(I . phi(x) - (f(x) - f(x - I)))^2]`` with ``I ~ N(0, sigma^2 I_d)`` and ``f`` the
  class logit; ``phi`` is the method's *raw* attribution (the gradient for SM, not the 2-D map). With
  ``normalize=True`` the attribution is first scaled by the ``beta`` that minimises the expression (Yeh et
  al.'s scale-invariant version, Captum's ``normalize``). Lower = more faithful. Captum's ``infidelity`` is the
  reference implementation the tests compare with.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from smoothgeo.core.checks import eval_mode

__all__ = ["deletion_insertion", "infidelity"]


def _class_prob(model: nn.Module, z: Tensor, y: Tensor) -> Tensor:
    return torch.softmax(model(z), 1).gather(1, y.view(-1, 1)).flatten()


@torch.no_grad()
def deletion_insertion(model: nn.Module, x: Tensor, maps: Tensor, y: Tensor, *, steps: int = 20,
                       baseline: float = 0.0) -> dict[str, Tensor]:
    """Deletion and insertion AUCs of ``maps`` (N, H, W) for images ``x`` (N, C, H, W) and classes ``y``.

    Pixels are removed (or revealed) in the order of the map, ``ceil(t * H * W)`` of them at fraction ``t``;
    ties in the map are broken by pixel index. Returns (N,) tensors ``deletion_auc``, ``insertion_auc`` and
    their ``*_relative`` versions (curves divided by the clean probability), and ``clean_prob``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (points on the curve besides t = 0), got {steps}")
    n, _, h, w = x.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must have shape ({n}, {h}, {w}) to match x {tuple(x.shape)}, got {tuple(maps.shape)}")
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    rank = rank.view(n, 1, h, w)
    base = torch.full_like(x, float(baseline))
    with eval_mode(model):
        clean = _class_prob(model, x, y)
        dele, ins = [], []
        for i in range(steps + 1):
            count = -(-i * h * w // steps)       # ceil(i / steps * H * W)
            top = rank < count                   # (N, 1, H, W), broadcast over channels
            dele.append(_class_prob(model, torch.where(top, base, x), y))
            ins.append(_class_prob(model, torch.where(top, x, base), y))
    dele, ins = torch.stack(dele, 1), torch.stack(ins, 1)
    auc = lambda c: torch.trapezoid(c, dx=1.0 / steps, dim=1)  # noqa: E731
    rel = clean.clamp_min(1e-12).view(-1, 1)
    return {"deletion_auc": auc(dele), "insertion_auc": auc(ins), "deletion_auc_relative": auc(dele / rel),
            "insertion_auc_relative": auc(ins / rel), "clean_prob": clean}


@torch.no_grad()
def infidelity(model: nn.Module, x: Tensor, attributions: Tensor, y: Tensor, *, noise_std: float = 0.1,
               samples: int = 10, normalize: bool = True, generator: torch.Generator | None = None,
               perturbations: Tensor | None = None) -> Tensor:
    """Yeh et al.'s infidelity of raw ``attributions`` (shaped like ``x``) for the class logits ``y``; (N,).

    ``perturbations`` (S, N, C, H, W) replaces the Gaussian draws (the tests pass Captum the same ones).
    """
    if perturbations is None:
        perturbations = noise_std * torch.randn((samples, *x.shape), generator=generator, device=x.device,
                                                dtype=x.dtype)
    with eval_mode(model):
        f_x = model(x).gather(1, y.view(-1, 1)).flatten()
        dot, diff = [], []
        for pert in perturbations:
            dot.append((pert * attributions).flatten(1).sum(1))
            diff.append(f_x - model(x - pert).gather(1, y.view(-1, 1)).flatten())
    dot, diff = torch.stack(dot, 1).double(), torch.stack(diff, 1).double()
    if normalize:
        beta = (dot * diff).mean(1) / (dot * dot).mean(1).clamp_min(1e-30)
        dot = dot * beta.view(-1, 1)
    return (dot - diff).pow(2).mean(1)
