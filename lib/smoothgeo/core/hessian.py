"""The largest eigenvalue lambda_max of the input Hessian of the cross-entropy loss, per image.

* :func:`hessian_max_eig`: lambda_max per image. For a piecewise-linear network (ReLU, max-pool, linear, conv,
  eval-mode BatchNorm) the Hessian is ``H = J^T (diag(p) - p p^T) J`` almost everywhere, with ``J`` the C x d
  Jacobian of the logits and ``p = softmax(logits)``; its non-zero spectrum is that of the C x C matrix
  ``L^T J J^T L`` with ``L L^T = diag(p) - p p^T`` (Wang et al. 2020, arXiv 2006.06643), so lambda_max is exact
  and cheap. Smooth networks (Softplus, Tanh, GELU, ...) use power iteration on Hessian-vector products
  (:func:`power_hessian_max_eig`).
* :func:`ce_hessian_factor` / :func:`ce_hessian_lambda_max`: the C x C routine itself; the SSR recipe's
  :func:`lambda_max_penalty` builds on the same function (its value is this lambda_max, its weight gradient the
  eigenvalue derivative, computed with a single ``create_graph`` backward pass). Two cheaper routes for
  training need fewer than C Jacobian rows and never overestimate: ``top_classes`` (merge all but the m most
  probable classes into one; error bounded by the dropped within-group gradient spread) and ``ritz_vectors``
  (Rayleigh-Ritz on a subspace picked from the last linear layer); their errors on trained models are
  measured by ``benchmarks/ssr_error.py``.
* :func:`logit_jacobian` and :func:`is_piecewise_linear`, which the routes above rest on.

Scale-invariant curvature measures of the logits live in :mod:`smoothgeo.core.geometry`; Lipschitz ratios of
the gradient and the bound test in :mod:`smoothgeo.core.lipschitz`.

All measurements run the model in eval mode (its previous mode is restored) on the device of ``x``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgeo.core.attributions import resolve_target
from smoothgeo.core.checks import eval_mode
from smoothgeo.core.models import Normalize

__all__ = [
    "hessian_max_eig", "ce_hessian_lambda_max", "ce_hessian_factor", "lambda_max_penalty", "logit_jacobian",
    "merged_class_factor", "exact_hessian_max_eig", "power_hessian_max_eig", "is_piecewise_linear",
    "PIECEWISE_LINEAR",
]

#: leaf modules that keep a network piecewise linear in its input (BatchNorm only in eval mode)
PIECEWISE_LINEAR: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.Linear, nn.Identity,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Sequential, nn.Flatten, nn.Unflatten,  # an empty Sequential is the identity
    nn.Dropout, nn.Dropout2d, nn.ZeroPad2d, nn.ConstantPad2d, Normalize,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_piecewise_linear(model: nn.Module) -> bool:
    """True when every leaf module is one of :data:`PIECEWISE_LINEAR` (and BatchNorm is in eval mode).

    Functional calls inside a custom ``forward`` (``F.gelu`` ...) cannot be seen; the repository's models use
    activation *modules* only.
    """
    for m in model.modules():
        if next(m.children(), None) is not None:
            continue  # a container; its children are checked
        if not isinstance(m, PIECEWISE_LINEAR) or (isinstance(m, _BATCHNORM) and m.training):
            return False
    return True


def logit_jacobian(model: nn.Module, x: Tensor, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Logits and the per-image Jacobian of the logits w.r.t. the input.

    One backward pass per class c through ``sum_n f_c(x_n)`` gives row c of every image's Jacobian at once
    (images are independent when the model is; train-mode BatchNorm couples them). This was faster on the CPU
    than ``is_grads_batched`` or ``torch.func.vmap(jacrev)`` (see benchmarks/training_cost.py --jacobian).

    Args:
        x: (N, ...) inputs.
        create_graph: keep the graph so the Jacobian can be differentiated (the SSR recipe does not need this:
            see :func:`lambda_max_penalty`).
    Returns:
        logits (N, C) and the Jacobian (N, C, *x.shape[1:]).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        n_classes = logits.shape[1]
        rows = [torch.autograd.grad(logits[:, c].sum(), x, create_graph=create_graph,
                                    retain_graph=create_graph or c < n_classes - 1)[0]
                for c in range(n_classes)]
    return logits, torch.stack(rows, 1)


def ce_hessian_factor(logits: Tensor, jacobian: Tensor | None = None, *, average_channels: bool = False
                      ) -> tuple[Tensor, Tensor | None]:
    """``L`` with ``L L^T = diag(p) - p p^T`` and, given the Jacobian, the C x C matrix ``L^T J J^T L``.

    ``p = softmax(logits)`` is computed here from the *logits* (the probabilities, not the logits, enter the
    Hessian of the cross-entropy). ``L = diag(sqrt p) (I - u u^T)`` with ``u = sqrt p`` (a unit vector, so
    ``I - u u^T`` is a symmetric projection and ``L L^T = diag(p) - p p^T``): a closed form that, unlike ``eigh``
    of ``diag(p) - p p^T``, stays finite for near one-hot ``p``. The non-zero eigenvalues of
    ``H = J^T L L^T J = (L^T J)^T (L^T J)`` are those of ``L^T (J J^T) L``. Both in float64.

    Args:
        logits: (N, C).
        jacobian: (N, C, *input_shape) from :func:`logit_jacobian`, or None for ``L`` only.
        average_channels: average J over the colour-channel axis (dim 2) before forming ``J J^T``, as the
            paper's reference code did. False (default) gives the exact Hessian.
    Returns:
        ``L`` (N, C, C) and the symmetric ``L^T J J^T L`` (N, C, C) (None without a Jacobian).
    """
    u = (0.5 * logits.double().log_softmax(1)).exp()                    # sqrt(p) (N, C), finite gradient at p = 0
    eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
    lower = u.unsqueeze(2) * (eye - u.unsqueeze(2) * u.unsqueeze(1))  # L = diag(u)(I - u u^T)
    if jacobian is None:
        return lower, None
    if logits.dim() != 2 or jacobian.shape[:2] != logits.shape:
        raise ValueError(f"logits (N, C) and Jacobian (N, C, ...) do not match: {tuple(logits.shape)} vs "
                         f"{tuple(jacobian.shape)}")
    jac = _flat_rows(jacobian, average_channels, "image Jacobians (N, C, channels, H, W)", jacobian.shape)
    small = lower.transpose(1, 2) @ (jac @ jac.transpose(1, 2)) @ lower  # L^T J J^T L
    return lower, 0.5 * (small + small.transpose(1, 2))                 # exact symmetry for eigh


def _flat_rows(rows: Tensor, average_channels: bool, needs: str, shape) -> Tensor:
    """Jacobian rows (N, k, *input_shape) as (N, k, d) float64, averaged over the colour-channel axis (dim 2)
    first when ``average_channels`` (ValueError, saying it ``needs`` images and showing ``shape``, without one)."""
    if average_channels:
        if rows.dim() < 4:
            raise ValueError(f"average_channels needs {needs}, got shape {tuple(shape)}")
        rows = rows.mean(2)
    return rows.flatten(2).double()


def ce_hessian_lambda_max(logits: Tensor, jacobian: Tensor, *, average_channels: bool = False) -> Tensor:
    """lambda_max of ``H = J^T (diag(p) - p p^T) J`` per image, by the exact C x C route.

    The largest eigenvalue of ``L^T J J^T L`` (:func:`ce_hessian_factor`) by ``eigvalsh`` in float64;
    differentiable w.r.t. logits and Jacobian.

    Args:
        logits: (N, C); ``p = softmax(logits)`` is taken here.
        jacobian: (N, C, *input_shape) from :func:`logit_jacobian`.
        average_channels: see :func:`ce_hessian_factor` (default False: the exact Hessian).
    Returns:
        (N,) lambda_max (>= 0), in the dtype of ``logits``.
    """
    _, small = ce_hessian_factor(logits, jacobian, average_channels=average_channels)
    return torch.linalg.eigvalsh(small)[:, -1].clamp_min(0).to(logits.dtype)


def exact_hessian_max_eig(model: nn.Module, x: Tensor, *, average_channels: bool = False) -> Tensor:
    """lambda_max of the input Hessian of CE for a piecewise-linear ``model`` (exact C x C route), (N,), detached.

    Runs the model in its current mode. The label does not enter: for a piecewise-linear network the Hessian
    of CE does not depend on it.
    """
    logits, jac = logit_jacobian(model, x)
    return ce_hessian_lambda_max(logits, jac, average_channels=average_channels).detach()


def _top_classes(top_classes: int | None, n_classes: int) -> int:
    """The number of explicitly kept classes; ``n_classes`` (the exact route) for None, 0 or >= C."""
    if top_classes is None or top_classes == 0:
        return n_classes
    if int(top_classes) != top_classes or top_classes < 0:
        raise ValueError(f"top_classes must be an integer >= 0 (0 = every class), got {top_classes!r}")
    return n_classes if top_classes >= n_classes else int(top_classes)


def merged_class_factor(logits: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """Factor ``L_S`` and class weights ``E`` of the merged-class Hessian of ``top_classes`` (float64).

    ``order`` (N, m) holds each image's kept classes ``S``; the other classes form one merged class with mass
    ``q = sum_{c not in S} p_c`` and gradient ``r = J^T s``, ``s`` = the softmax over the rest only (so
    ``p_c = q s_c`` there). The columns of ``E`` (N, C, m) are ``e_k - s`` for ``k`` in ``S``: ``J^T E`` are the
    differences ``D_k = g_k - r``. With ``pi = (p_S, q)`` and ``L = diag(sqrt pi)(I - sqrt pi sqrt pi^T)``
    (``L L^T = diag(pi) - pi pi^T``, see :func:`ce_hessian_factor`), ``L_S`` = the first m rows of ``L``
    (N, m, m + 1), and the merged Hessian is ``H_m = (J^T E L_S)(J^T E L_S)^T``: the covariance under ``pi`` of
    the m + 1 gradients ``(D_1, ..., D_m, 0)``, i.e. of ``(g_1, ..., g_m, r)`` shifted by ``-r``. Differentiable
    w.r.t. the logits; stable for near one-hot ``p`` (``q`` may underflow to 0).
    """
    lg = logits.double()
    kept = torch.zeros_like(lg, dtype=torch.bool).scatter(1, order, True)
    s = lg.masked_fill(kept, float("-inf")).softmax(1)                   # rest-conditional distribution
    lp = lg.log_softmax(1)                                               # sqrt(pi) via logs: finite gradients
    log_pi = torch.cat([lp.gather(1, order), lp.masked_fill(kept, float("-inf")).logsumexp(1, keepdim=True)], 1)
    u = (0.5 * log_pi).exp()                                              # sqrt(pi), pi = (p_S, q): (N, m + 1)
    eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
    lower = u.unsqueeze(2) * (eye - u.unsqueeze(2) * u.unsqueeze(1))
    onehot = torch.zeros_like(lg).unsqueeze(2).repeat(1, 1, order.shape[1]).scatter(1, order.unsqueeze(1), 1.0)
    return lower[:, :-1, :], onehot - s.unsqueeze(2)


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last ``nn.Linear`` module in registration order, or None."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


def lambda_max_penalty(model: nn.Module, x: Tensor, *, average_channels: bool = False,
                       top_classes: int | None = None, ritz_vectors: int | None = None) -> tuple[Tensor, Tensor]:
    """Logits and lambda_max of the input Hessian of CE per image, differentiable w.r.t. the weights (SSR).

    Exact route (``top_classes`` None, 0 or >= C): the value is the exact C x C lambda_max. Its gradient
    uses the eigenvalue derivative ``d lambda = v^T dM v`` (``v`` the top eigenvector of ``M = L^T J J^T L``):
    with ``v`` held fixed, ``lambda = ||J^T (L v)||^2``, and ``J^T w`` is a single vector-Jacobian product. So
    the Jacobian itself is computed *without* a graph (C cheap backward passes) and only one backward pass
    carries ``create_graph``; this gives the same value and weight gradient as differentiating ``eigvalsh``
    through a ``create_graph`` Jacobian (tested) at about half the cost. (At a repeated top eigenvalue both
    pick one eigenvector.)

    Merged-class route (``top_classes = m``, 1 <= m < C): write the Hessian as the covariance of the
    logit gradients under ``p``, ``H = sum_c p_c (g_c - gbar)(g_c - gbar)^T`` (``g_c = grad f_c``,
    ``gbar = sum_c p_c g_c``: the same ``H = J^T (diag p - p p^T) J`` as Wang et al. 2020, arXiv 2006.06643).
    Keep each image's m most probable classes ``S`` and merge the others into one class with mass ``q`` and
    gradient ``r = sum_{c not in S} p_c g_c / q``. By the law of total variance
    ``H = H_m + sum_{c not in S} p_c (g_c - r)(g_c - r)^T`` with ``H_m`` the covariance of the merged classes,
    so the returned ``lambda_m = lambda_max(H_m)`` satisfies

        ``0 <= lambda_max(H) - lambda_m <= sum_{c not in S} p_c ||g_c - r||^2 <= q max_{c, c' not in S}
        ||g_c - g_c'||^2``

    (Weyl's inequality; the middle term is the trace of the dropped within-rest covariance). It is never an
    overestimate, is exact when at most one class is left out (``m = C - 1``, tested against the exact route), and
    only the *within*-rest spread is dropped: the merged class keeps the rest's mean gradient, unlike the
    naive restriction to the top-m classes (measured on SSR models: up to 56-62 % error). Cost: m graph-free
    backward passes (the differences ``J^T (e_k - s)`` of :func:`merged_class_factor`; none for m = 1, where
    ``H_1`` has rank one) instead of C, an (m + 1) x (m + 1) eigenproblem, and the same single ``create_graph``
    pass; the weight gradient is the exact gradient of ``lambda_m`` (same eigenvector argument). Measured
    relative errors on trained models: ``benchmarks/ssr_error.py``.

    Ritz route (``ritz_vectors = k``, 1 <= k < C): the Rayleigh-Ritz value of ``M = L^T J J^T L`` on a
    k-dimensional subspace that costs no backward pass to choose: the top-k eigenvectors ``V`` of the proxy
    ``L^T W D W^T L``, with ``W`` the weight of the last registered ``nn.Linear`` and ``D`` the 0/1 pattern of
    its input (the logits' Jacobian w.r.t. that input, masked by the preceding ReLU; ``I`` in place of
    ``W D W^T`` when that layer does not output the C logits). The proxy only picks the subspace: a poor proxy
    costs accuracy, never the lower-bound property. Then k graph-free passes ``J^T L V``, a k x k eigenproblem, and the same single
    ``create_graph`` pass with the Ritz vector held fixed. The value is a Ritz value, so
    ``0 <= lambda_max - lambda_k`` (Cauchy interlacing); it is exact when the proxy's top-k space holds the true
    top eigenvector (always at k >= C - 1, since ``M u = 0`` for ``u = sqrt p``); there is no a priori bound on
    the shortfall: it is measured (``benchmarks/ssr_error.py``). The weight gradient is that of ``||J^T L V y||^2``
    with ``V y`` fixed, which tends to the exact eigenvalue gradient as the Ritz vector tends to ``v``.

    Args:
        x: (N, ...) inputs; the model runs in its current mode (train mode while training).
        average_channels: see :func:`ce_hessian_factor`.
        top_classes: None or 0 (default): exact; m: the merged-class route with m kept classes per image.
        ritz_vectors: None or 0 (default): not used; k: the Ritz route with k vectors (only one of
            ``top_classes`` and ``ritz_vectors`` may be set).
    Returns:
        logits (N, C) and lambda_max (N,), both attached to the graph of the weights.
    """
    if top_classes and ritz_vectors:
        raise ValueError(f"set top_classes ({top_classes}) or ritz_vectors ({ritz_vectors}), not both")
    x = x.detach().requires_grad_(True)
    captured: list[Tensor] = []
    hook = None
    last = last_linear(model) if ritz_vectors else None
    if last is not None:
        hook = last.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach()))
    with torch.enable_grad():
        try:
            logits = model(x)
        finally:
            if hook is not None:
                hook.remove()
        n_classes = logits.shape[1]
        m = _top_classes(top_classes, n_classes)
        k = n_classes if not ritz_vectors else _top_classes(ritz_vectors, n_classes)
        if ritz_vectors and k < n_classes:
            with torch.no_grad():
                lower, _ = ce_hessian_factor(logits)
                if captured and last.out_features == n_classes:
                    y = (captured[-1].flatten(1) != 0).to(last.weight.dtype).unsqueeze(1) * last.weight
                    proxy = (y @ y.transpose(1, 2)).double()                  # W D W^T, (N, C, C)
                    proxy = lower.transpose(1, 2) @ proxy @ lower
                else:
                    proxy = lower.transpose(1, 2) @ lower
                basis = torch.linalg.eigh(0.5 * (proxy + proxy.transpose(1, 2)))[1][..., -k:]  # (N, C, k)
                lv = (lower @ basis).to(logits.dtype)
                rows = [torch.autograd.grad(logits, x, grad_outputs=lv[:, :, i], retain_graph=True)[0]
                        for i in range(k)]
                r = _flat_rows(torch.stack(rows, 1), average_channels, "image inputs (N, channels, H, W)", x.shape)
                small = r @ r.transpose(1, 2)                                  # V^T M V, (N, k, k)
                top = basis @ torch.linalg.eigh(small)[1][..., -1:]            # Ritz vector (N, C, 1)
            lower, _ = ce_hessian_factor(logits)                              # L, attached through p
            w = (lower @ top).squeeze(2).to(logits.dtype)
        elif m == n_classes:
            rows = [torch.autograd.grad(logits[:, c].sum(), x, retain_graph=True)[0] for c in range(n_classes)]
            with torch.no_grad():
                _, small = ce_hessian_factor(logits.detach(), torch.stack(rows, 1),
                                             average_channels=average_channels)
                top = torch.linalg.eigh(small)[1][..., -1:]                    # (N, C, 1) top eigenvector
            lower, _ = ce_hessian_factor(logits)                              # L, attached through p
            w = (lower @ top).squeeze(2).to(logits.dtype)                     # (N, C)
        else:
            if average_channels and x.dim() < 4:
                raise ValueError("average_channels needs image inputs (N, channels, H, W), got shape "
                                 f"{tuple(x.shape)}")
            with torch.no_grad():
                order = logits.argsort(1, descending=True)[:, :m]             # (N, m) kept classes
                lower, e = merged_class_factor(logits, order)
                if m == 1:  # H_1 has rank one: the eigenvector needs no Jacobian row
                    small = lower.transpose(1, 2) @ lower
                else:
                    rows = [torch.autograd.grad(logits, x, grad_outputs=e[:, :, k].to(logits.dtype),
                                                retain_graph=True)[0] for k in range(m)]
                    d = torch.stack(rows, 1)                                  # D_k = g_k - r
                    if average_channels:
                        d = d.mean(2)
                    d = d.flatten(2).double()
                    small = lower.transpose(1, 2) @ (d @ d.transpose(1, 2)) @ lower  # (N, m+1, m+1)
                top = torch.linalg.eigh(0.5 * (small + small.transpose(1, 2)))[1][..., -1:]
            lower, e = merged_class_factor(logits, order)                     # attached through p
            w = (e @ (lower @ top)).squeeze(2).to(logits.dtype)               # (N, C)
        (g,) = torch.autograd.grad(logits, x, grad_outputs=w, create_graph=True)  # J^T w per image
    if average_channels:
        g = g.mean(1)
    return logits, g.flatten(1).pow(2).sum(1)


#: power iterations always taken before the convergence test may stop: a start vector (nearly) orthogonal to the
#: dominant eigenvector has a Rayleigh quotient that barely moves at first, which the test would read as converged
MIN_POWER_ITERS = 10


def _power_iteration(hvp, v: Tensor, shift: Tensor, iters: int, tol: float) -> tuple[Tensor, Tensor]:
    """Dominant eigenpair of ``H - shift I`` per image; returns (Rayleigh quotient, vector)."""
    view = (-1,) + (1,) * (v.dim() - 1)
    lam = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(iters):
        hv = hvp(v) - shift.view(view) * v
        new = (v * hv).flatten(1).sum(1)
        norm = hv.flatten(1).norm(dim=1)
        v = torch.where(norm.view(view) > 0, hv / norm.clamp_min(1e-30).view(view), v)
        done = i + 1 >= MIN_POWER_ITERS and ((new - lam).abs() <= tol * new.abs().clamp_min(1e-12)).all()
        lam = new
        if done:
            break
    return lam, v


def power_hessian_max_eig(model: nn.Module, x: Tensor, y: Tensor, *, iters: int = 100, tol: float = 1e-5,
                          generator: torch.Generator | None = None) -> Tensor:
    """lambda_max of the input Hessian of CE by batched Hessian-vector-product power iteration, (N,).

    One forward and one first-order backward (kept with ``create_graph``), then one double-backward per
    iteration, all images at once. Power iteration finds the eigenvalue of largest magnitude; where that is
    negative (possible for smooth networks) a second run on ``H - mu I`` recovers the largest algebraic one.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")  # sum: per-image gradients stay unscaled
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)

    def hvp(v: Tensor) -> Tensor:
        if not grad.requires_grad:  # the model is linear in x: H = 0
            return torch.zeros_like(v)
        return torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True)[0]

    def start() -> Tensor:
        v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (x.dim() - 1)))

    zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    mu, _ = _power_iteration(hvp, start(), zero, iters, tol)
    if (mu < 0).any():
        # a fresh start: the first run's vector is the eigenvector of mu, which H - mu I maps to (nearly) zero,
        # so starting there the second run would stop at once and return mu itself
        shift = mu.clamp_max(0)
        nu, _ = _power_iteration(hvp, start(), shift, iters, tol)
        mu = torch.where(mu < 0, nu + shift, mu)
    return mu.detach()


def hessian_max_eig(model: nn.Module, x: Tensor, y=None, *, method: str = "auto", iters: int = 100,
                    tol: float = 1e-5, seed: int = 0, chunk_size: int | None = None) -> Tensor:
    """Largest eigenvalue of the input Hessian of the cross-entropy loss, per image.

    Args:
        model: maps (N, ...) inputs to (N, C) logits; evaluated in eval mode (mode restored afterwards).
        x: (N, ...) inputs.
        y: labels (N,), an int, or None for the model's prediction. Only the power route uses it (for a
            piecewise-linear network the Hessian of CE does not depend on the label).
        method: "exact" (C x C route; valid for piecewise-linear networks only), "power" (Hessian-vector
            power iteration; any twice-differentiable network), or "auto" (exact when
            :func:`is_piecewise_linear`, else power).
        iters, tol: power iteration: maximum iterations and relative tolerance on the Rayleigh quotient.
        seed: seed of the power iteration's random start vector.
        chunk_size: images per pass (memory); None = all at once.
    Returns:
        (N,) tensor of lambda_max, on the device of ``x``.
    """
    if method not in ("auto", "exact", "power"):
        raise ValueError(f"unknown Hessian method {method!r}; choose 'auto', 'exact' or 'power'")
    if iters < 1 or tol <= 0:
        raise ValueError(f"power iteration needs iters >= 1 and tol > 0, got iters={iters}, tol={tol}")
    with eval_mode(model):
        if method == "auto":
            method = "exact" if is_piecewise_linear(model) else "power"
        y = resolve_target(model, x, y)
        chunk = x.shape[0] if chunk_size is None else max(1, int(chunk_size))
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
        out = []
        for s in range(0, x.shape[0], chunk):
            xs, ys = x[s:s + chunk], y[s:s + chunk]
            if method == "exact":
                out.append(exact_hessian_max_eig(model, xs))
            else:
                out.append(power_hessian_max_eig(model, xs, ys, iters=iters, tol=tol, generator=generator))
    return torch.cat(out)
