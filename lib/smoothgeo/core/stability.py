"""The stability metrics of the literature, batched: Max/Avg-Sensitivity and RIS / ROS / RRS.

All of them perturb the clean image with random noise (not an attack) and compare the method's *raw*
attribution ``e`` (shaped like the input: the gradient for SM, not the 2-D map) at ``x`` and at each
perturbed ``x'``; the same ``samples`` noise draws serve every metric of one call.

* **Max-Sensitivity / Avg-Sensitivity** (Yeh et al. 2019, arXiv 1901.09392; Captum's ``sensitivity_max``):
  ``max_{x'} ||e(x') - e(x)|| / ||e(x)||`` (and the mean over ``x'``), ``x' = x + U[-r, r]^d`` (not clipped),
  Frobenius norm. (Captum divides by ``||e(x)||`` where it is non-zero; so do we.)
* **RIS, ROS, RRS** (Agarwal et al. 2022, "Rethinking Stability for Attribution-based Explanations",
  arXiv 2203.06877): with the element-wise relative change ``rel(a, b) = (a - b) / (a + eps)``::

      RIS = max_{x'} ||rel(e_x, e_x')||_2 / max(||rel(x, x')||_2, eps_min)
      ROS = max_{x'} ||rel(e_x, e_x')||_2 / max(||rel(f(x), f(x'))||_2, eps_min)
      RRS = max_{x'} ||rel(e_x, e_x')||_2 / max(||rel(L_x, L_x')||_2, eps_min)

  over perturbed ``x'`` that keep the predicted class (the others are excluded, as in the paper; an image all
  of whose draws change the class gets NaN), ``f`` the logits and ``L`` the input of the model's last linear
  layer (the penultimate representation). Quantus reports these as log10 of the mean over images; the
  analysis layer does that (:func:`smoothgeo.analysis.frames.explanation_summary`).
* ``changed``: the fraction of draws that changed the prediction, reported beside them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from smoothgeo.core.attributions import attribute
from smoothgeo.core.checks import eval_mode
from smoothgeo.core.hessian import last_linear

__all__ = ["stability", "uniform_perturbations", "EPS", "EPS_MIN"]

EPS = 1e-6          # added to the denominator of the element-wise relative change
EPS_MIN = 1e-6      # the floor of RIS/ROS/RRS's denominators


def uniform_perturbations(x: Tensor, *, radius: float, samples: int, generator=None) -> Tensor:
    """(S, N, ...) draws ``U[-radius, radius]`` shaped like ``x`` (Captum's default perturbation)."""
    u = torch.rand((samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return (2 * u - 1) * radius


def _forward_with_features(model: nn.Module, z: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and the input of the last linear layer (flattened); the features are the logits without one."""
    layer, seen = last_linear(model), []
    if layer is None:
        logits = model(z)
        return logits, logits
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    try:
        logits = model(z)
    finally:
        handle.remove()
    return logits, seen[-1].flatten(1)


def _rel_norm(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b) / (a + EPS)).flatten(1).double().norm(dim=1)


def stability(model: nn.Module, x: Tensor, y: Tensor, method: str, *, options: dict | None = None,
              radius: float = 0.02, samples: int = 10, generator=None, perturbations: Tensor | None = None,
              seed_generator=None) -> dict[str, Tensor]:
    """The metrics above for ``method`` at images ``x`` (explained for classes ``y``); (N,) tensors.

    ``perturbations`` (S, N, ...) replaces the uniform draws; ``generator`` draws them (and ``seed_generator``,
    if given, the attribution's own noise for SG/UG).
    """
    options = dict(options or {})
    if perturbations is None:
        perturbations = uniform_perturbations(x, radius=radius, samples=samples, generator=generator)
    with eval_mode(model):
        explain = lambda z: attribute(method, model, z, y, generator=seed_generator, **options).detach()  # noqa: E731
        e_x = explain(x)
        with torch.no_grad():
            f_x, l_x = _forward_with_features(model, x)
        pred = f_x.argmax(1)
        norm_x = e_x.flatten(1).double().norm(dim=1)
        sens, ris, ros, rrs, kept = [], [], [], [], []
        for pert in perturbations:
            z = x + pert
            e_z = explain(z)
            with torch.no_grad():
                f_z, l_z = _forward_with_features(model, z)
            d = (e_z - e_x).flatten(1).double().norm(dim=1)
            sens.append(torch.where(norm_x > 0, d / norm_x.clamp_min(1e-300), d))
            num = _rel_norm(e_x, e_z)
            ris.append(num / _rel_norm(x, z).clamp_min(EPS_MIN))
            ros.append(num / _rel_norm(f_x, f_z).clamp_min(EPS_MIN))
            rrs.append(num / _rel_norm(l_x, l_z).clamp_min(EPS_MIN))
            kept.append(f_z.argmax(1) == pred)
    sens, kept = torch.stack(sens, 1), torch.stack(kept, 1)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=x.device)

    def worst(values):
        v = torch.stack(values, 1)
        v = torch.where(kept, v, torch.full_like(v, -float("inf"))).amax(1)
        return torch.where(kept.any(1), v, nan)

    return {"max_sensitivity": sens.amax(1), "avg_sensitivity": sens.mean(1), "ris": worst(ris),
            "ros": worst(ros), "rrs": worst(rrs), "changed": 1.0 - kept.double().mean(1)}
