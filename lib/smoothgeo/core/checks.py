"""Checks shared by the core layer: eval mode for a block, and the input and option checks of the public functions.

* :func:`eval_mode`: the one context manager that puts networks in eval mode and restores every submodule's own
  mode afterwards (attributions, attacks, geometry, Lipschitz ratios and training-time attacks all use it), so
  BatchNorm statistics never change while a network is explained, attacked or measured and each image's result
  does not depend on the others in its batch.
* :func:`check_inputs`: a batched, finite float tensor of the model's dtype and device (attributions).
* :func:`check_images`: :func:`check_inputs` plus the image layout (N, C, H, W), a non-empty batch, values in
  [0, 1] and one integer label per image (attacks, the evaluation engine).
* :func:`finite_number` and :func:`finite_tensor`: an option that is a real, finite number (or tensor), so NaN and
  infinity never pass a range check by accident (``nan > 0`` is False, but ``not nan <= 1`` is True, and
  ``inf > 0`` is True).

Every check raises ``ValueError`` with a message that names the argument and says what is allowed.
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["eval_mode", "check_inputs", "check_images", "finite_number", "finite_tensor"]


@contextmanager
def eval_mode(*modules: nn.Module):
    """Put ``modules`` (and all their submodules) in eval mode; restore each submodule's own mode on exit.

    Yields the module when one is given, else the tuple of modules. Objects that are not ``nn.Module`` (plain
    functions used as models) are left alone.
    """
    modules_ = [m for m in modules if isinstance(m, nn.Module)]
    saved = [(m, m.training) for module in modules_ for m in module.modules()]
    try:
        for module in modules_:
            module.eval()
        yield modules[0] if len(modules) == 1 else modules
    finally:
        for m, training in saved:
            m.training = training


def finite_number(value, name: str) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a real, finite number (bools refused)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def finite_tensor(value: Tensor, name: str) -> Tensor:
    """``value`` unchanged; ValueError naming ``name`` if it is not floating point/integer or holds NaN or inf."""
    if value.is_complex():
        raise ValueError(f"{name} must be real, got dtype {value.dtype}")
    if value.is_floating_point():
        bad = int((~torch.isfinite(value.detach())).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite values; it must be finite")
    return value


def _check_like_model(x: Tensor, model, name: str, fix: str) -> None:
    """``x`` must have the dtype (when floating) and device of ``model``'s first parameter (nothing to check
    without a model or parameters); the dtype error suggests ``fix``."""
    p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if p is not None and p.is_floating_point() and p.dtype != x.dtype:
        raise ValueError(f"{name} is {x.dtype} but the model's parameters are {p.dtype}; {fix} "
                         f"(e.g. {name}.to({p.dtype}))")
    if p is not None and p.device != x.device:
        raise ValueError(f"{name} is on {x.device} but the model is on {p.device}; move one of them")


def check_inputs(x: Tensor, model: nn.Module | None = None) -> None:
    """Inputs must be a batched float tensor of finite values, of the model's parameter dtype and device."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a batched tensor (N, ...), got {type(x).__name__} "
                         f"with shape {tuple(getattr(x, 'shape', ()))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor, got {x.dtype}; convert images with x.float() / 255 "
                         f"(inputs live in [0, 1])")
    _check_like_model(x, model, "x", "convert one of them")
    bad = int((~torch.isfinite(x.detach())).sum())
    if bad:
        raise ValueError(f"x holds {bad} NaN or infinite values; attributions need finite inputs")


def check_images(x: Tensor, y=None, *, name: str = "x", model: nn.Module | None = None,
                 num_classes: int | None = None) -> Tensor | None:
    """Check ``x`` is a finite float (N, C, H, W) batch in [0, 1] and ``y`` one class per image; return ``y`` as long.

    Args:
        x: the images.
        y: integer labels (N,) (any integer dtype; returned as int64), or None.
        name: how error messages call ``x``.
        model: when given, ``x`` must have the dtype and device of its parameters, and labels must be below
            its number of classes (the ``out_features`` of its last ``nn.Linear``) unless ``num_classes`` is given.
        num_classes: labels must lie in ``0 .. num_classes - 1``.
    Raises:
        ValueError naming the problem: wrong type/shape/dtype, empty batch, NaN or inf values, values outside
        [0, 1], labels of the wrong dtype/shape or out of range, a dtype/device mismatch with ``model``.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of images (N, C, H, W), got "
                         f"{type(x).__name__} with shape {tuple(getattr(x, 'shape', ()))}"
                         + (f" and dtype {x.dtype}" if isinstance(x, Tensor) else ""))
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; pass at least one image")
    if x.numel() == 0:
        raise ValueError(f"{name} has images without pixels (shape {tuple(x.shape)}); pass (N, C, H, W) with "
                         f"C, H, W >= 1")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} holds NaN or infinite values in {len(bad)} image(s) (indices {bad[:10]}"
                         f"{' ...' if len(bad) > 10 else ''}); attacks and attributions need finite pixels")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must lie in [0, 1] (normalisation belongs inside the model), "
                         f"got values in [{lo:.4g}, {hi:.4g}]")
    _check_like_model(x, model, name, "convert the images")
    if y is None:
        return None
    y = torch.as_tensor(y, device=x.device)
    if (y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.is_complex()
            or y.dtype == torch.bool):
        raise ValueError(f"y must be integer class labels of shape ({x.shape[0]},), got dtype {y.dtype} and "
                         f"shape {tuple(y.shape)}")
    if num_classes is None and isinstance(model, nn.Module):
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
        num_classes = last[-1].out_features if last else None
    y_lo, y_hi = int(y.min()), int(y.max())
    if y_lo < 0 or (num_classes is not None and y_hi >= num_classes):
        allowed = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ValueError(f"y holds labels in [{y_lo}, {y_hi}]; allowed: {allowed}")
    return y.long()
