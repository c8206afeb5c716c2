"""Training recipes and the one training loop.

Every recipe is a loss function ``loss(model, x, y, **options) -> (loss, logs)`` (``logs``: floats for the
progress bar and the record); :data:`RECIPES` maps names to them and :data:`OPTIONS` to their options, with
defaults and allowed ranges (:func:`check_options`). :func:`fit` is the single loop that trains any of them.

* ``natural``: cross-entropy.
* ``weight_decay``: CE + ``weight_decay / 2 * sum ||W||^2`` over the weight tensors (parameters with 2 or more
  dims: linear and conv kernels; not biases or BatchNorm affines). An explicit penalty, so the recipe is
  self-contained and means the same under any optimizer (its gradient equals torch's coupled
  ``weight_decay=`` for SGD/Adam on those tensors; it is not AdamW's decoupled decay).
* ``madry``: PGD adversarial training (Madry et al. 2018, arXiv 1706.06083): CE at the worst point of the L-inf
  ball found by ``steps`` signed-gradient steps from a random start.
* ``ig_norm``: IG-NORM (Chen et al. 2019, arXiv 1905.09957): ``CE(x) + lam * max_{x' in B(x, eps)}
  ||IG^loss(x -> x')||_1``, IG of the per-example loss along the straight path from x to x' (right Riemann sum
  with ``ig_steps`` points), the max found by PGD.
* ``ssr``: Smooth Surface Regularization (Wang et al. 2020, arXiv 2006.06643):
  ``(1 - alpha) CE + alpha * scale * mean_batch lambda_max(H)``, with ``H`` the input Hessian of CE and
  lambda_max by the exact C x C route of :func:`smoothgeo.core.hessian.ce_hessian_factor` (exact for
  piecewise-linear networks), made differentiable by :func:`smoothgeo.core.hessian.lambda_max_penalty`.
  ``average_channels`` (default False = exact Hessian) averages the Jacobian over colour channels as the
  reference code did (a no-op on 1-channel Fashion-MNIST). ``top_classes`` / ``ritz_vectors`` (default 0 =
  exact) switch to a cheaper lambda_max that never overestimates (see :func:`ssr_loss`).

Attacks inside a recipe (madry, ig_norm) run the model in eval mode and restore its mode; the loss itself is
computed in the model's training mode. Everything follows the device of the model and the batch.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgeo.core.geometry import evaluating
from smoothgeo.core.hessian import lambda_max_penalty
from smoothgeo.core.threat import pgd_linf

__all__ = [
    "natural_loss", "weight_decay_loss", "madry_loss", "ig_norm_loss", "ssr_loss", "RECIPES", "OPTIONS",
    "check_options", "pgd_linf", "ig_of_loss", "fit", "evaluate_accuracy", "make_optimizer", "epoch_seed",
    "OPTIMIZERS", "TOP_CLASSES", "RITZ_VECTORS", "SCHEDULES", "lr_at",
]


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def natural_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict]:
    """Cross-entropy."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, {"ce": loss.item(), "acc": _accuracy(logits, y)}


def weight_decay_loss(model: nn.Module, x: Tensor, y: Tensor, *, weight_decay: float = 5e-4
                      ) -> tuple[Tensor, dict]:
    """CE + ``weight_decay / 2 * sum ||W||^2`` over parameters with >= 2 dims (kernels, not biases)."""
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    l2 = sum(p.pow(2).sum() for p in model.parameters() if p.requires_grad and p.dim() >= 2)
    loss = ce + 0.5 * weight_decay * l2
    return loss, {"ce": ce.item(), "l2": float(l2.detach()), "acc": _accuracy(logits, y)}


def _ce_per_example(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def madry_loss(model: nn.Module, x: Tensor, y: Tensor, *, epsilon: float = 0.1, step_size: float = 0.02,
               steps: int = 7, random_start: bool = True) -> tuple[Tensor, dict]:
    """CE at the PGD point of ``B_inf(x, epsilon)`` (Madry et al. 2018)."""
    xa = pgd_linf(model, x, lambda m, z: _ce_per_example(m, z, y), epsilon=epsilon, step_size=step_size,
                  steps=steps, random_start=random_start)
    logits = model(xa)
    loss = F.cross_entropy(logits, y)
    return loss, {"ce_adv": loss.item(), "acc_adv": _accuracy(logits, y)}


def ig_of_loss(model: nn.Module, x: Tensor, x_end: Tensor, y: Tensor, *, steps: int = 10,
               create_graph: bool = False) -> Tensor:
    """IG of the per-example CE loss along ``x -> x_end``: ``(x_end - x) * mean_i grad loss(x + (i/m)(x_end - x))``.

    All ``steps`` path points of all images go through the model in one batch. With ``create_graph`` the result
    is differentiable w.r.t. ``x_end`` and the weights.
    """
    m = int(steps)
    alphas = torch.arange(1, m + 1, device=x.device, dtype=x.dtype).view(-1, *([1] * x.dim())) / m
    diff = x_end - x
    points = (x.unsqueeze(0) + alphas * diff.unsqueeze(0)).reshape(-1, *x.shape[1:])
    if not points.requires_grad:
        points.requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(points), y.repeat(m), reduction="sum")  # sum: per-example gradients
        (grads,) = torch.autograd.grad(loss, points, create_graph=create_graph)
    return diff * grads.view(m, *x.shape).mean(0)


def ig_norm_loss(model: nn.Module, x: Tensor, y: Tensor, *, epsilon: float = 0.1, lam: float = 1.0,
                 ig_steps: int = 10, steps: int = 3, step_size: float = 0.05,
                 random_start: bool = True) -> tuple[Tensor, dict]:
    """IG-NORM (Chen et al. 2019): ``CE(x) + lam * mean_n max_{x'} ||IG^loss(x -> x')||_1``, max by PGD."""
    def objective(m: nn.Module, z: Tensor) -> Tensor:
        return ig_of_loss(m, x, z, y, steps=ig_steps, create_graph=True).abs().flatten(1).sum(1)

    xa = pgd_linf(model, x, objective, epsilon=epsilon, step_size=step_size, steps=steps,
                  random_start=random_start)
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    ig = ig_of_loss(model, x, xa, y, steps=ig_steps, create_graph=True).abs().flatten(1).sum(1).mean()
    loss = ce + lam * ig
    return loss, {"ce": ce.item(), "ig_norm": ig.item(), "acc": _accuracy(logits, y)}


#: SSR's default ``top_classes`` and ``ritz_vectors`` (0 and 0 = exact lambda_max; see :func:`ssr_loss`)
TOP_CLASSES = 0
RITZ_VECTORS = 0


def ssr_loss(model: nn.Module, x: Tensor, y: Tensor, *, alpha: float = 0.3, scale: float = 1.0,
             average_channels: bool = False, top_classes: int = TOP_CLASSES, ritz_vectors: int = RITZ_VECTORS
             ) -> tuple[Tensor, dict]:
    """SSR (Wang et al. 2020): ``(1 - alpha) CE + alpha * scale * mean_batch lambda_max(H_x CE)``.

    lambda_max per image by :func:`smoothgeo.core.hessian.lambda_max_penalty`. ``top_classes = ritz_vectors = 0``:
    the exact route, one forward pass, C graph-free backward passes for every image's Jacobian (batched over the batch),
    the exact C x C eigenproblem, and one ``create_graph`` backward pass that makes the penalty differentiable
    w.r.t. the weights. ``top_classes = m`` (1 <= m < C): the merged-class route, each image's m most probable
    classes kept and the rest merged into one class; m graph-free passes instead of C, the value never above
    the exact lambda_max and short of it by at most the dropped within-rest gradient spread (bound and measured
    errors in :func:`~smoothgeo.core.hessian.lambda_max_penalty` and ``benchmarks/ssr_error.py``).
    ``ritz_vectors = k`` (1 <= k < C; instead of ``top_classes``): the Rayleigh-Ritz value on a k-dimensional
    subspace picked for free from the last linear layer; k graph-free passes, never above the exact value, no a
    priori bound (measured in the benchmark). The penalty vanishes where ``p`` is near one-hot.
    """
    logits, lam = lambda_max_penalty(model, x, average_channels=average_channels, top_classes=top_classes,
                                     ritz_vectors=ritz_vectors)
    lam_max = lam.mean()
    ce = F.cross_entropy(logits, y)
    loss = (1 - alpha) * ce + alpha * scale * lam_max
    return loss, {"ce": ce.item(), "lambda_max": lam_max.item(), "acc": _accuracy(logits, y)}


RECIPES: dict[str, Callable[..., tuple[Tensor, dict]]] = {
    "natural": natural_loss, "weight_decay": weight_decay_loss, "madry": madry_loss, "ig_norm": ig_norm_loss,
    "ssr": ssr_loss,
}

# option -> (default, type, low, high, low_inclusive); None = unbounded. The upper bounds reject implausible
# values (typos such as 5e2 for 5e-2) while leaving a wide margin above anything the papers use: weight decay
# <= 0.1, step sizes <= 1 and epsilon <= 1 (pixel units, inputs in [0, 1]), attack/IG steps <= 1000,
# IG-NORM lambda <= 1e4, SSR scale <= 1e4 (the paper's largest is 100s).
_F, _I, _B = float, int, bool
OPTIONS: dict[str, dict[str, tuple]] = {
    "natural": {},
    "weight_decay": {"weight_decay": (5e-4, _F, 0.0, 0.1, True)},
    "madry": {"epsilon": (0.1, _F, 0.0, 1.0, False), "step_size": (0.02, _F, 0.0, 1.0, False),
              "steps": (7, _I, 1, 1000, True), "random_start": (True, _B, None, None, True)},
    "ig_norm": {"epsilon": (0.1, _F, 0.0, 1.0, False), "lam": (1.0, _F, 0.0, 1e4, True),
                "ig_steps": (10, _I, 1, 1000, True), "steps": (3, _I, 1, 1000, True),
                "step_size": (0.05, _F, 0.0, 1.0, False), "random_start": (True, _B, None, None, True)},
    "ssr": {"alpha": (0.3, _F, 0.0, 1.0, True), "scale": (1.0, _F, 0.0, 1e4, True),
            "average_channels": (False, _B, None, None, True),
            "top_classes": (TOP_CLASSES, _I, 0, 1000, True),
            "ritz_vectors": (RITZ_VECTORS, _I, 0, 1000, True)},
}


def _range_text(name, lo, hi, lo_incl) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{lo} {'<=' if lo_incl else '<'} {name}")
    if hi is not None:
        parts.append(f"{name} <= {hi}" if not parts else f"<= {hi}")
    return " ".join(parts) if parts else "any value"


def check_options(recipe: str, options: dict | None = None) -> dict:
    """Validate ``options`` of ``recipe`` and fill in defaults.

    Raises:
        ValueError: unknown recipe, unknown option, wrong type, or value out of range (the message names the
            option and its allowed range).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown training recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    spec = OPTIONS[recipe]
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for recipe {recipe!r}; allowed: {sorted(spec) or 'none'}")
    out = {}
    for name, (default, kind, lo, hi, lo_incl) in spec.items():
        value = options.get(name, default)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{recipe} option {name}={value!r} must be true or false")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    kind is int and not float(value).is_integer()):
                what = "an integer" if kind is int else "a number"
                raise ValueError(f"{recipe} option {name}={value!r} must be {what} with "
                                 f"{_range_text(name, lo, hi, lo_incl)}")
            value = kind(value)
            bad = (lo is not None and (value < lo or (value == lo and not lo_incl))) or (
                hi is not None and value > hi) or (kind is float and not math.isfinite(value))
            if bad:
                raise ValueError(f"{recipe} option {name}={value} is out of range; allowed: "
                                 f"{_range_text(name, lo, hi, lo_incl)}")
        out[name] = value
    return out


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, params, *, lr: float) -> torch.optim.Optimizer:
    """``adam`` (torch defaults) or ``sgd`` (momentum 0.9); no optimizer weight decay (see weight_decay)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based): a well-mixed function of (seed, epoch)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


SCHEDULES = ("constant", "onecycle")


def lr_at(step: int, total: int, lr: float, schedule: str = "constant") -> float:
    """The learning rate of batch ``step`` (0-based) of ``total``: ``constant``, or ``onecycle``.

    ``onecycle`` (Smith & Topin 2019, the shape of ``torch.optim.lr_scheduler.OneCycleLR`` with its defaults):
    cosine warm-up from ``lr / 25`` to ``lr`` over the first 30 % of the batches, then cosine annealing to
    ``lr / 25e4``. A closed form of the step, so a resumed run (and a run stopped early at ``stop_at``, the
    matched-accuracy snapshots) follows exactly the schedule of the uninterrupted full run.
    """
    if schedule == "constant":
        return lr
    if schedule != "onecycle":
        raise ValueError(f"schedule {schedule!r} is not valid; allowed: {', '.join(SCHEDULES)}")
    warm = max(1, int(0.3 * total))
    start, end = lr / 25.0, lr / 25.0 / 1e4
    if step < warm:
        t = step / warm
        return start + (lr - start) * (1 - math.cos(math.pi * t)) / 2
    t = min(1.0, (step - warm) / max(1, total - warm))
    return end + (lr - end) * (1 + math.cos(math.pi * t)) / 2


def fit(model: nn.Module, train_loader, *, recipe: str, epochs: int, lr: float,
        optimizer: str | torch.optim.Optimizer = "adam", options: dict | None = None, start_epoch: int = 0,
        optimizer_state: dict | None = None, max_batches: int | None = None, seed: int | None = None,
        on_epoch_end: Callable | None = None, progress: bool = True, desc: str | None = None,
        schedule: str = "constant", stop_after: int | None = None, autocast: torch.dtype = torch.float32,
        on_step: Callable | None = None) -> list[dict]:
    """Train ``model`` with ``recipe`` for epochs ``start_epoch .. epochs - 1``.

    (Over 60 lines: the one training loop, kept in one piece so every recipe runs exactly the same steps.)

    Args:
        model: trained in place, on the device of its parameters (batches are moved there).
        train_loader: iterable of ``(x, y)`` batches.
        recipe: a name in :data:`RECIPES`; ``options`` are its options (checked, defaults filled).
        epochs: total number of epochs (the run stops after epoch ``epochs - 1``).
        lr: learning rate.
        optimizer: ``"adam"``, ``"sgd"`` or a ready optimizer over ``model``'s parameters.
        start_epoch: epochs already done (resuming); ``optimizer_state`` is the optimizer's saved state.
        max_batches: batches per epoch at most (None: the whole loader).
        seed: if given, the global torch RNG is re-seeded with ``epoch_seed(seed, epoch)`` at the start of each
            epoch, so shuffling and random starts of epoch e do not depend on what ran before it: a resumed run
            reproduces an uninterrupted one exactly.
        on_epoch_end: ``callback(epoch_done, model, optimizer, log)`` after each epoch; ``epoch_done`` counts
            finished epochs (1-based), ``log`` is that epoch's entry of the returned history.
        progress: show a tqdm bar per epoch.
        schedule: learning-rate schedule over the whole budget (``epochs`` x batches per epoch), see :func:`lr_at`.
        stop_after: stop after this many batches in all (None: the whole budget); the schedule still spans the
            whole budget, so the result equals the full run's model at that batch (an early-stopped snapshot).
        autocast: ``torch.bfloat16`` runs the recipe's forward and backward passes under autocast (see
            :func:`smoothgeo.core.device.autocast_dtype`); float32 (default) runs without it.
        on_step: ``callback(step_done, model)`` after every batch (``step_done`` counts batches, 1-based, over
            all epochs), e.g. to measure validation accuracy along training.
    Returns:
        One dict per epoch run: ``epoch`` (1-based), ``seconds``, ``batches`` and the mean of the recipe's logs.
    """
    from tqdm.auto import tqdm

    if epochs < 0 or start_epoch < 0:
        raise ValueError(f"epochs and start_epoch must be >= 0, got epochs={epochs}, start_epoch={start_epoch}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    options = check_options(recipe, options)
    loss_fn = RECIPES[recipe]
    device = _device_of(model)
    opt = make_optimizer(optimizer, model.parameters(), lr=lr) if isinstance(optimizer, str) else optimizer
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else (max_batches or 0)
    if max_batches is not None:
        per_epoch = min(per_epoch, max_batches)
    total_steps = max(1, per_epoch * epochs)
    use_autocast = autocast != torch.float32
    step = start_epoch * per_epoch
    history = []
    for epoch in range(start_epoch, epochs):
        if stop_after is not None and step >= stop_after:
            break
        if seed is not None:
            torch.manual_seed(epoch_seed(seed, epoch))
        model.train()
        total = len(train_loader) if hasattr(train_loader, "__len__") else None
        if max_batches is not None:
            total = max_batches if total is None else min(total, max_batches)
        sums: dict[str, float] = {}
        n_batches = 0
        start = time.perf_counter()
        bar = tqdm(total=total, desc=desc or f"{recipe} epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        for x, y in train_loader:
            if max_batches is not None and n_batches >= max_batches:
                break
            if stop_after is not None and step >= stop_after:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total_steps, lr, schedule)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast, enabled=use_autocast):
                loss, logs = loss_fn(model, x, y, **options)
            loss = loss.float()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{recipe} loss became {loss.item()} at epoch {epoch + 1}, batch "
                                         f"{n_batches + 1}; lower lr or the regularisation strength")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            logs = {"loss": loss.item(), **logs}
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_batches += 1
            step += 1
            if on_step is not None:
                on_step(step, model)
            bar.update(1)
            bar.set_postfix({k: f"{v / n_batches:.4g}" for k, v in sums.items()}, refresh=False)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log = {"epoch": epoch + 1, "seconds": time.perf_counter() - start, "batches": n_batches,
               **{k: v / max(n_batches, 1) for k, v in sums.items()}}
        history.append(log)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, opt, log)
    return history


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader, *, max_batches: int | None = None) -> float:
    """Clean top-1 accuracy of ``model`` (in eval mode, mode restored) over ``loader``'s batches."""
    device = _device_of(model)
    correct = total = 0
    with evaluating(model):
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    if total == 0:
        raise ValueError("evaluate_accuracy got an empty loader")
    return correct / total
