"""Model checkpoints and resumable training state, written atomically and loaded safely.

A checkpoint is a dict ``{"format", "arch", "num_classes", "model_kwargs", "state_dict", "meta"}`` saved with
``torch.save``; it holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
A *partial* (``NAME.partial.pt``) additionally holds the optimizer state, the epoch count, the training history,
the RNG state and the configuration it was trained with, so an interrupted run can continue.

Every failure to load names the file and says what to do (re-create it with ``dvc repro`` / the training CLI,
or delete it).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .io import atomic_path
from .models import build_model

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "save_partial", "load_partial",
           "rng_state", "set_rng_state", "CheckpointError", "FORMAT"]

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model it claims to hold."""


def _remedy(path: Path) -> str:
    name = path.name.removesuffix(".partial.pt").removesuffix(".pt")
    return (f"delete {path} and re-create it with `dvc repro` (the training stage that writes it) or "
            f"`python -m smoothgeo.train --name {name}`")


def _save(path, obj) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_checkpoint(path, *, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` of a smoothgeo checkpoint dict, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; create it with `dvc repro` (the training stage that "
                              f"writes it) or `python -m smoothgeo.train --name "
                              f"{path.name.removesuffix('.partial.pt').removesuffix('.pt')}`")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, unpickling refusals ... come in many types
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated and cannot be read "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              f"{_remedy(path)}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or "state_dict" not in obj:
        raise CheckpointError(f"{path} is not a smoothgeo checkpoint (format {FORMAT}: a dict with 'state_dict', "
                              f"'arch', 'meta'); {_remedy(path)}")
    return obj


def save_checkpoint(path, model: nn.Module, *, arch: str, num_classes: int, meta: dict | None = None,
                    model_kwargs: dict | None = None) -> None:
    """Atomically write ``model``'s weights (moved to the CPU) and how to rebuild it.

    Args:
        path: destination ``.pt`` file (folders are created).
        arch, num_classes, model_kwargs: rebuild the network with
            ``smoothgeo.models.build_model(arch, num_classes=num_classes, **model_kwargs)``.
        meta: plain data (str, numbers, bools, None, lists, dicts) describing the run: recipe, hyperparameters...
    """
    obj = {"format": FORMAT, "arch": str(arch), "num_classes": int(num_classes),
           "model_kwargs": dict(model_kwargs or {}), "meta": dict(meta or {}),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    _save(path, obj)


def load_checkpoint(path, *, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(model in eval mode on device, meta)``; ``meta`` also carries ``arch``, ``num_classes`` and
        ``model_kwargs``.
    Raises:
        CheckpointError: the file is missing, corrupted/truncated, not a smoothgeo checkpoint, or its weights do
            not fit its architecture; the message names the file and what to do.
    """
    path = Path(path)
    obj = read_checkpoint(path)
    if obj.get("kind") == "partial" or "arch" not in obj:
        raise CheckpointError(f"{path} is a partial training state, not a finished checkpoint; finish the run with "
                              f"`python -m smoothgeo.train --name ...` (it resumes) or `dvc repro`")
    try:
        model = build_model(obj["arch"], num_classes=obj["num_classes"], **obj.get("model_kwargs", {}))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} names an architecture that cannot be built ({exc}); "
                              f"{_remedy(path)}") from exc
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: the weights do not fit architecture {obj['arch']!r} "
                              f"({str(exc).splitlines()[0]} ...); {_remedy(path)}") from exc
    meta = {**obj.get("meta", {}), "arch": obj["arch"], "num_classes": obj["num_classes"],
            "model_kwargs": obj.get("model_kwargs", {})}
    return model.to(device).eval(), meta


def rng_state() -> dict:
    """The global torch RNG state (CPU and every visible CUDA device)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (the CUDA part only where the same number of devices is visible)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def save_partial(path, *, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, config: dict,
                 history: list | None = None) -> None:
    """Atomically write the training state after ``epoch`` finished epochs (model, optimizer, RNG, history)."""
    obj = {"format": FORMAT, "kind": "partial", "epoch": int(epoch), "config": config,
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "optimizer": optimizer.state_dict(), "rng": rng_state(), "history": list(history or [])}
    _save(path, obj)


def load_partial(path, *, map_location="cpu") -> dict | None:
    """The partial training state at ``path``, or None when there is none.

    An unreadable partial (a crash while writing cannot cause one: writes are atomic) raises
    :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not os.path.exists(path):
        return None
    obj = read_checkpoint(path, map_location=map_location)
    if obj.get("kind") != "partial":
        raise CheckpointError(f"{path} is not a partial training state; {_remedy(path)}")
    return obj
