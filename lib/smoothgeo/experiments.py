"""The glue the notebooks share: the model zoo, the evaluation images, a zoo-wide evaluation.

Notebooks stay thin (parameters, calls into here and into the library, a table, a figure); anything a test
would want to call lives here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from .checkpoints import load_checkpoint
from .data import load_tensors
from .evaluation import evaluate
from .geometry import is_piecewise_linear
from .models import softplus_copy

__all__ = ["ZooEntry", "load_zoo", "eval_images", "test_accuracy", "attack_kwargs", "evaluate_zoo",
           "method_options_for", "training_records"]


@dataclass
class ZooEntry:
    """A model to evaluate: ``attack_beta`` is the softplus beta of its attack surrogate (None: smooth already)."""

    model: nn.Module
    base: str            # checkpoint name it comes from
    recipe: str
    attack_beta: float | None


def load_zoo(names, *, checkpoints: Path, device, attack_beta: float = 10.0, softplus_betas=(),
             softplus_base: str = "natural") -> dict[str, ZooEntry]:
    """Load ``checkpoints/<name>.pt`` for each name; add ``<softplus_base>+softplus<beta>`` inference-time copies.

    ReLU models are attacked through a softplus(``attack_beta``) surrogate; the softplus copies are smooth,
    so they are attacked directly (their own gradients), as Dombrowski et al. do.
    """
    zoo: dict[str, ZooEntry] = {}
    for name in names:
        model, meta = load_checkpoint(Path(checkpoints) / f"{name}.pt", device=device)
        zoo[name] = ZooEntry(model, name, meta.get("recipe", name),
                             attack_beta if is_piecewise_linear(model) else None)
    for beta in softplus_betas:
        if softplus_base in zoo:
            base = zoo[softplus_base].model
        else:
            base, _ = load_checkpoint(Path(checkpoints) / f"{softplus_base}.pt", device=device)
        zoo[f"{softplus_base}+softplus{beta:g}"] = ZooEntry(softplus_copy(base, beta).eval(), softplus_base,
                                                           f"softplus (beta {beta:g})", None)
    return zoo


def eval_images(data: dict, n: int, *, seed: int, device, root: Path | None = None) -> tuple[Tensor, Tensor]:
    """``n`` test images drawn (seeded) from the profile's test set, on ``device``."""
    data_root = Path(data["root"]) if root is None else Path(root) / data["root"]
    x, y = load_tensors(data["dataset"], "test", root=data_root, limit=n, seed=seed)
    return x.to(device), y.to(device)


@torch.no_grad()
def test_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model`` on (x, y), in batches, on the model's device."""
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size].cpu()).sum().item()
    return correct / len(x)


def attack_kwargs(attack: dict, **overrides) -> dict:
    """params.yaml's ``attack`` section as keyword arguments of :func:`smoothgeo.evaluation.evaluate`.

    ``attack["direction"]`` (optional) holds cheaper attribution options for the attack direction only
    (e.g. fewer IG steps or SG samples on the softplus surrogate); scores and metrics use ``methods``.
    """
    kw = {"step_size": attack["step_size"], "steps": attack["steps"], "k": attack["k"],
          "restarts": attack["restarts"], "convention": attack["convention"],
          "direction_options": attack.get("direction") or None}
    kw.update(overrides)
    return kw


def method_options_for(methods: dict, method: str, **overrides) -> dict[str, dict]:
    """``{method: options}`` from params.yaml's ``methods`` section with ``overrides`` applied."""
    return {method: {**methods.get(method, {}), **overrides}}


def evaluate_zoo(zoo: dict[str, ZooEntry], x: Tensor, y: Tensor, *, partial_dir: Path | None = None,
                 **kwargs) -> pd.DataFrame:
    """:func:`smoothgeo.evaluation.evaluate` for every model of ``zoo``; adds a ``model`` column.

    Partial results go to ``partial_dir/<model>.csv`` so an interrupted notebook resumes where it stopped; a
    partial file from other parameters is discarded (with a warning), as a re-run stage must start over.
    """
    kwargs.setdefault("on_mismatch", "restart")
    frames = []
    for label, entry in zoo.items():
        partial = None if partial_dir is None else Path(partial_dir) / f"{label}.csv"
        frame = evaluate(entry.model, x, y, beta=entry.attack_beta, partial_path=partial, **kwargs)
        frames.append(frame.assign(model=label))
    return pd.concat(frames, ignore_index=True)


def training_records(folder: Path, names) -> pd.DataFrame:
    """The JSON records of the training stages as a frame: recipe, test accuracy, seconds per epoch / batch."""
    from .io import read_json

    rows = []
    for name in names:
        rec = read_json(Path(folder) / f"{name}.json")
        history = rec.get("history") or []
        batches = sum(h.get("batches", 0) for h in history)
        seconds = sum(rec.get("seconds_per_epoch") or [])
        rows.append({"model": name, "recipe": rec.get("recipe"), "epochs": rec.get("epochs"),
                     "test_accuracy": rec.get("test_accuracy"),
                     "seconds_per_epoch": rec.get("mean_seconds_per_epoch"),
                     "seconds_per_batch": seconds / batches if batches else float("nan")})
    return pd.DataFrame(rows)
