"""Faithfulness and the literature's stability metrics of every attribution method of one model.

Called by the measure stage (:mod:`smoothgeo.pipeline.measure`), which writes the frame to
``results/explanations/<model>.csv.gz``: one row per (image, method) for the first ``n_images`` evaluation
images (the attack stage's images, same indices). Columns: model, image, label, method, the deletion /
insertion AUCs (:func:`smoothgeo.core.faithfulness.deletion_insertion`, the class is the true label; only
correctly classified images are explained, the others are left out), infidelity
(:func:`smoothgeo.core.faithfulness.infidelity`), max/avg sensitivity, RIS, ROS, RRS and the share of draws
that changed the prediction (:func:`smoothgeo.core.stability.stability`), and sparseness (the Gini index of
the 2-D map, :func:`smoothgeo.core.metrics.gini_sparseness`).

The ``measures.explain`` section of params.yaml (defaults shown)::

    explain:
      n_images: 100          # the first images of the evaluation set (<= measures.n_images)
      methods: [SM, IG, SG, UG]
      deletion_steps: 20     # points of the deletion / insertion curves besides t = 0
      baseline: 0.0          # the value a deleted pixel takes (0 = black, Fashion-MNIST's background)
      infidelity_std: 0.1    # sigma of the infidelity's Gaussian perturbations
      infidelity_samples: 10
      radius: 0.05           # the uniform noise of the stability metrics (L-inf, half the attack's eps)
      samples: 10            # noise draws per image (Captum's default count)
      seed: 1002             # own seed, independent of the attacks
      models: all            # or a list of model names / glob patterns; other models get an empty table
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from smoothgeo.core.attacks import derive_seed
from smoothgeo.core.attributions import METHODS, attribute, make_generator, map_of
from smoothgeo.core.faithfulness import deletion_insertion, infidelity
from smoothgeo.core.metrics import gini_sparseness
from smoothgeo.core.stability import stability

__all__ = ["EXPLAIN_DEFAULTS", "explain_config", "explain_frame", "explains", "COLUMNS"]

EXPLAIN_DEFAULTS = {"n_images": 100, "methods": ["SM", "IG", "SG", "UG"], "deletion_steps": 20, "baseline": 0.0,
                    "infidelity_std": 0.1, "infidelity_samples": 10, "radius": 0.05, "samples": 10, "seed": 1002,
                    "models": "all"}
COLUMNS = ["model", "image", "label", "method", "clean_prob", "deletion_auc", "insertion_auc",
           "deletion_auc_relative", "insertion_auc_relative", "infidelity", "max_sensitivity", "avg_sensitivity",
           "ris", "ros", "rrs", "changed", "sparseness"]


def explain_config(section) -> dict:
    """``measures.explain`` merged over :data:`EXPLAIN_DEFAULTS` and checked (one-line ValueErrors)."""
    section = section or {}
    if not isinstance(section, dict):
        raise ValueError(f"params 'measures.explain' must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(EXPLAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in params 'measures.explain'; allowed: {sorted(EXPLAIN_DEFAULTS)}")
    cfg = {**EXPLAIN_DEFAULTS, **section}
    for name in ("n_images", "deletion_steps", "infidelity_samples", "samples"):
        v = cfg[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"params 'measures.explain.{name}' must be an integer >= 1, got {v!r}")
    for name in ("infidelity_std", "radius"):
        v = cfg[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"params 'measures.explain.{name}' must be a number > 0, got {v!r}")
    if isinstance(cfg["baseline"], bool) or not isinstance(cfg["baseline"], (int, float)):
        raise ValueError(f"params 'measures.explain.baseline' must be a number (a pixel value), got {cfg['baseline']!r}")
    methods = cfg["methods"]
    if not isinstance(methods, list) or not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"params 'measures.explain.methods' must be a non-empty list of methods among "
                         f"{sorted(METHODS)}, got {methods!r}")
    models = cfg["models"]
    if models != "all" and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        raise ValueError(f"params 'measures.explain.models' must be 'all' or a list of model names, got {models!r}")
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int):
        raise ValueError(f"params 'measures.explain.seed' must be an integer, got {cfg['seed']!r}")
    return cfg


def explains(cfg: dict, model: str) -> bool:
    """Whether ``model`` is one of ``measures.explain.models``."""
    import fnmatch

    return cfg["models"] == "all" or any(fnmatch.fnmatchcase(model, p) for p in cfg["models"])


def _np(t) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def explain_frame(model, x, y, *, cfg: dict, method_options: dict, convention: str, chunk_size: int,
                  name: str = "") -> pd.DataFrame:
    """The rows described in the module docstring for images ``x`` (already the first ``n_images``)."""
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).cpu().numpy()
    index = np.flatnonzero(correct)
    frames = []
    for method in cfg["methods"]:
        opts = dict(method_options.get(method) or {})
        for s in range(0, len(index), chunk_size):
            idx = torch.as_tensor(index[s:s + chunk_size], device=x.device)
            xs, ys = x[idx], y[idx]
            seed = derive_seed(cfg["seed"], method, s)
            attr = attribute(method, model, xs, ys, generator=make_generator(xs.device, seed), **opts).detach()
            maps = map_of(method, attr, xs, convention=convention).detach()
            curves = deletion_insertion(model, xs, maps, ys, steps=cfg["deletion_steps"], baseline=cfg["baseline"])
            infd = infidelity(model, xs, attr, ys, noise_std=cfg["infidelity_std"], samples=cfg["infidelity_samples"],
                              generator=make_generator(xs.device, derive_seed(seed, "infidelity")))
            stab = stability(model, xs, ys, method, options=opts, radius=cfg["radius"], samples=cfg["samples"],
                             generator=make_generator(xs.device, derive_seed(seed, "stability")),
                             seed_generator=make_generator(xs.device, derive_seed(seed, "noise")))
            frames.append(pd.DataFrame({
                "model": name, "image": idx.cpu().numpy(), "label": ys.cpu().numpy(), "method": method,
                **{k: _np(v) for k, v in curves.items()}, "infidelity": _np(infd),
                **{k: _np(v) for k, v in stab.items()}, "sparseness": _np(gini_sparseness(maps))}))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]
