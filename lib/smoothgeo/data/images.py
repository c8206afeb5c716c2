"""The evaluation images every stage shares, and clean test accuracy.

The attack stage, the measure stage and the qualitative notebook draw the same seeded test images through
:func:`eval_images`, so every table is indexed by the same ``image`` numbers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from smoothgeo.data.datasets import load_tensors

__all__ = ["eval_images", "test_accuracy"]


def eval_images(data: dict, n: int, *, seed: int, device, root: Path | None = None,
                offset: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` test images drawn (seeded) from the profile's test set, on ``device``.

    ``offset`` skips the first ``offset`` images of the same seeded draw: ``offset=n`` gives ``n`` images disjoint
    from ``eval_images(data, n)`` (the replication set of the central rows).
    """
    data_root = Path(data["root"]) if root is None else Path(root) / data["root"]
    x, y = load_tensors(data["dataset"], "test", root=data_root, limit=n, seed=seed, offset=offset)
    return x.to(device), y.to(device)


@torch.no_grad()
def test_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model`` on (x, y), in batches, on the model's device."""
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size].cpu()).sum().item()
    return correct / len(x)
