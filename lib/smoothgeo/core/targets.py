"""Target maps for the targeted attribution attack (Dombrowski et al. 2019, arXiv 1906.07983).

The targeted attack pushes image i's map towards the map of *another* image. The choice is made here, once, so
that every stage and every model uses the same pairs:

* :func:`pick_targets`: for image i the target is the first image after i (cyclically, in evaluation-set order)
  whose *true* label differs from i's. It depends on the labels only, not on the model, so every model is
  attacked towards the same target images (paired comparisons across models).
* :func:`target_maps`: the clean map of each target image under one attribution method on the model being
  attacked, for that model's predicted class at the target image (the explained class convention of
  :mod:`smoothgeo.core.evaluation`).
* :func:`target_distance`: the targeted attack's objective on maps, the mean squared difference per pixel
  between maps normalised to sum H*W (the same normalisation as :func:`smoothgeo.core.attacks.attack` applies to
  ``target_map``); lower = closer to the target.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from smoothgeo.core.evaluation import compute_maps

__all__ = ["pick_targets", "target_maps", "target_distance"]


def pick_targets(labels) -> Tensor:
    """Index (N,) long of the target image of each image: the next one (cyclically) with a different label.

    Raises:
        ValueError: fewer than two distinct labels (no image has a valid target).
    """
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    n = labels.numel()
    if n == 0 or labels.unique().numel() < 2:
        raise ValueError("the targeted attack needs evaluation images of at least two different labels, got "
                         f"labels {sorted(set(labels.tolist()))}; use more images (attacks.n_images)")
    out = torch.empty(n, dtype=torch.long)
    for i in range(n):
        for step in range(1, n):
            j = (i + step) % n
            if labels[j] != labels[i]:
                out[i] = j
                break
    return out


def target_maps(model: nn.Module, x: Tensor, labels, method: str, *, options: dict | None = None, seed: int = 0,
                convention: str = "grad_times_input", batch_size: int | None = None,
                index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(index, maps)``: per image the target image's index and its clean ``method`` map on ``model``.

    Args:
        model: the attacked model (its prediction at the target image is the explained class).
        x: (N, C, H, W) evaluation images; labels: (N,) their true labels (choose the targets).
        method, options, convention, batch_size: as in :func:`smoothgeo.core.evaluation.compute_maps`.
        seed: seeds SG/UG's noise.
        index: precomputed target indices (default :func:`pick_targets` of ``labels``).
    Returns:
        index (N,) long on the CPU, maps (N, H, W) on ``x``'s device (normalised, non-negative).
    """
    index = pick_targets(labels) if index is None else torch.as_tensor(index).long().cpu()
    # compute each distinct target image's map once, then spread it
    distinct, inverse = index.unique(return_inverse=True)
    xt = x[distinct.to(x.device)]
    with torch.no_grad():
        pred = model(xt).argmax(1)
    maps = compute_maps(model, xt, pred, method, options=options, seed=seed, convention=convention,
                        batch_size=batch_size)
    return index, maps[inverse.to(maps.device)]


def _normalise(m: Tensor) -> Tensor:
    h, w = m.shape[-2:]
    return m * (h * w) / m.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)


def target_distance(maps: Tensor, targets: Tensor) -> Tensor:
    """(N,) mean squared per-pixel difference between (N, H, W) maps and targets, each normalised to sum H*W."""
    if maps.shape != targets.shape or maps.dim() != 3:
        raise ValueError(f"maps and targets must both be (N, H, W), got {tuple(maps.shape)} and "
                         f"{tuple(targets.shape)}")
    return (_normalise(maps) - _normalise(targets)).pow(2).flatten(1).mean(1)
