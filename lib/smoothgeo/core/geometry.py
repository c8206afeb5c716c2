"""Geometry of a trained network's logits: curvature measures that do not change when every logit is scaled by t.

* :func:`logit_geometry`: per-image logit statistics, gradient norms and curvature measures, raw and
  scale-invariant (``relative_curvature``, ``lambda_max_fixed_scale``).
* :func:`top_two`: the predicted class and the runner-up.

lambda_max of the input Hessian of CE (exact C x C route, power iteration, the SSR penalty) lives in
:mod:`smoothgeo.core.hessian`; Lipschitz ratios of the gradient and the bound test in :mod:`smoothgeo.core.lipschitz`.

All measurements run the model in eval mode (its previous mode is restored) on the device of ``x``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgeo.core.attributions import resolve_target
from smoothgeo.core.checks import eval_mode
# hessian_max_eig and is_piecewise_linear are re-exported for callers that still import them from here
# (pipeline/measure.py: geometry.hessian_max_eig; pipeline/attack.py: is_piecewise_linear)
from smoothgeo.core.hessian import ce_hessian_lambda_max, hessian_max_eig, is_piecewise_linear, logit_jacobian

__all__ = ["logit_geometry", "top_two", "evaluating", "hessian_max_eig", "is_piecewise_linear"]

#: put ``model`` in eval mode for the block and restore every submodule's previous mode afterwards (the one
#: context manager of :mod:`smoothgeo.core.checks`, kept under this name for its callers)
evaluating = eval_mode


# ------------------------------------------------------------------------------------------------------------
# Scale-invariant geometry (issue 9.5).
#
# Multiplying every logit by t > 0 (a "temperature", e.g. shrinking the last layer) leaves the prediction, the
# normalised attribution maps and so every robustness metric unchanged, but multiplies the logit gradient by t
# and changes lambda_max of the CE Hessian through both J (by t^2) and p = softmax(t f). So a model can lower
# lambda_max and the raw gradient-Lipschitz ratio just by shrinking its logits (issue 9: ssr_s100's confidence
# 0.25). The measures below are invariant to that scale; each docstring says why.


def top_two(logits: Tensor) -> tuple[Tensor, Tensor]:
    """The predicted class and the runner-up per row of ``logits``."""
    top = logits.topk(2, dim=1).indices
    return top[:, 0], top[:, 1]


def logit_geometry(model: nn.Module, x: Tensor, y=None, *, lambda_max: Tensor | None = None,
                   logit_scale: float = 5.0, chunk_size: int | None = None) -> dict[str, Tensor]:
    """Per-image logit statistics, gradient norms and curvature measures, raw and scale-invariant.

    With ``f`` the logits, ``c`` the prediction, ``r`` the runner-up, ``J`` the C x d logit Jacobian,
    ``p = softmax(f)``, ``P = I - 11^T / C`` (centring) and ``g_c = grad f_c`` (the saliency map):

    Raw (change with the logit scale t): ``clean_conf`` p_c (changes through p), ``logit_margin`` f_c - f_r
    (x t), ``logit_norm`` ||f||, ``grad_logit_norm`` ||g_c|| (x t), ``grad_loss_norm`` ||grad_x CE(x, y)||
    = ||J^T (p - e_y)||, and, given ``lambda_max``, ``lambda_max_over_grad_logit2`` = lambda_max / ||g_c||^2 and
    ``lambda_max_over_grad_loss2`` = lambda_max / ||grad CE||^2. These two ratios remove the t^2 of J but *not*
    the dependence on p = softmax(t f), so they are normalised, not invariant (tested).

    Scale-invariant (unchanged under f -> t f for every t > 0, and under adding one function to every logit):

    * ``relative_curvature`` = lambda_max(J^T P J) / ||g_c - g_r||^2. The numerator is the largest variance
      direction of the class gradients (the p-free envelope of the CE Hessian ``J^T (diag p - pp^T) J``: its
      value at uniform p, times C); the denominator is the squared slope of the decision margin. Both scale by
      t^2; P and the margin remove any common function. Large = the class gradients disagree strongly
      compared with the slope that decides the class.
    * ``lambda_max_fixed_scale`` = lambda_max of the CE input Hessian of the per-image rescaled logits
      ``f~ = f * s / ||P f||`` with ``s = logit_scale`` (temperature held constant in x):
      ``(s / ||P f||)^2 lambda_max(J^T (diag p~ - p~ p~^T) J)``, ``p~ = softmax(f~)``. Under f -> t f, f~ is
      unchanged and the t^2 of J cancels the 1/t^2 of the factor: the paper's quantity at a common logit scale.

    Args:
        x: (N, ...) inputs; y: labels for the loss gradient (None: the prediction).
        lambda_max: (N,) precomputed lambda_max (e.g. :func:`hessian_max_eig`) for the two ratios.
        logit_scale: s above (centred logit norm at which ``lambda_max_fixed_scale`` is taken).
    Returns:
        dict of (N,) tensors (float64 for the curvature measures), plus ``prediction`` (long).
    """
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    chunk = x.shape[0] if chunk_size is None else max(1, int(chunk_size))
    parts: list[dict[str, Tensor]] = []
    with evaluating(model):
        y = resolve_target(model, x, y)
        for s in range(0, x.shape[0], chunk):
            logits, jac = logit_jacobian(model, x[s:s + chunk])
            logits, jac = logits.detach().double(), jac.detach().flatten(2).double()
            parts.append(_logit_geometry_chunk(logits, jac, y[s:s + chunk], logit_scale))
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if lambda_max is not None:
        lam = lambda_max.detach().double().to(out["grad_logit_norm"].device)
        out["lambda_max_over_grad_logit2"] = lam / out["grad_logit_norm"].pow(2).clamp_min(1e-30)
        out["lambda_max_over_grad_loss2"] = lam / out["grad_loss_norm"].pow(2).clamp_min(1e-30)
    return out


def _logit_geometry_chunk(logits: Tensor, jac: Tensor, y: Tensor, logit_scale: float) -> dict[str, Tensor]:
    n, C = logits.shape
    c, r = top_two(logits)
    rows = torch.arange(n, device=logits.device)
    p = logits.softmax(1)
    g_c, g_r = jac[rows, c], jac[rows, r]
    onehot = F.one_hot(y, C).double()
    grad_loss = (jac.transpose(1, 2) @ (p - onehot).unsqueeze(2)).squeeze(2)
    centre = torch.eye(C, dtype=jac.dtype, device=jac.device) - 1.0 / C
    gram = jac @ jac.transpose(1, 2)                                    # J J^T (N, C, C)
    spread = torch.linalg.eigvalsh(centre @ gram @ centre)[:, -1].clamp_min(0)
    margin_grad2 = (g_c - g_r).pow(2).sum(1)
    centred = logits - logits.mean(1, keepdim=True)
    cnorm = centred.norm(dim=1).clamp_min(1e-30)
    factor = logit_scale / cnorm
    lam_fixed = factor.pow(2) * ce_hessian_lambda_max(logits * factor.unsqueeze(1), jac)
    return {
        "prediction": c,
        "clean_conf": p[rows, c],
        "logit_margin": logits[rows, c] - logits[rows, r],
        "logit_norm": logits.norm(dim=1),
        "grad_logit_norm": g_c.norm(dim=1),
        "grad_loss_norm": grad_loss.norm(dim=1),
        "margin_grad_norm": margin_grad2.sqrt(),
        "relative_curvature": torch.where(margin_grad2 > 0, spread / margin_grad2.clamp_min(1e-30),
                                          torch.full_like(spread, float("nan"))),
        "lambda_max_fixed_scale": lam_fixed.double(),
    }
