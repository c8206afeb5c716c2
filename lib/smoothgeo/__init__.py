"""smoothgeo: smoothed geometry for robust attribution (Wang et al., NeurIPS 2020, arXiv 2006.06643).

The names a user calls are importable from here (``from smoothgeo import saliency, attack, topk_intersection``);
they are loaded lazily, so ``import smoothgeo`` stays cheap and the layers below can move without breaking a
user's notebook. :data:`API` maps every public name to the module that defines it; ``__all__`` is its keys.

Layers (imports point down only; ``docs/architecture.md`` explains each):
    core/      pure functions of tensors: models, attributions, attacks, metrics, ranks, geometry, targets,
               the evaluation engine, the device resolver
    store/     atomic files, checkpoints, names, tidy tables, progress bars
    data/      data sets, synthetic stand-ins, the shared evaluation images
    training/  recipes (one loss each) and the one training loop
    analysis/  reading a run's tables, statistics, frames, claims, tables and figures
    pipeline/  configuration and one small module per DVC stage (the command lines)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it (relative to this package)
API: dict[str, str] = {
    # attributions
    **dict.fromkeys(["saliency", "integrated_gradients", "smoothgrad", "uniform_gradient", "smooth_gradient",
                     "attribute", "attribution_map", "map_of", "METHODS"], "core.attributions"),
    # the attack
    **dict.fromkeys(["attack", "AttackResult", "KINDS"], "core.attacks"),
    # metrics
    **dict.fromkeys(["topk_intersection", "kendall_tau", "spearman_rho", "mass_center_dislocation",
                     "cosine_distance", "METRICS"], "core.metrics"),
    # geometry
    **dict.fromkeys(["hessian_max_eig", "lambda_max_penalty", "logit_jacobian"], "core.hessian"),
    "logit_geometry": "core.geometry",
    **dict.fromkeys(["gradient_lipschitz", "lipschitz_measures", "lipschitz_at_radius", "bound_test"],
                    "core.lipschitz"),
    # models
    **dict.fromkeys(["build_model", "softplus_copy", "ARCHITECTURES", "FashionCNN", "ResNet20", "MLP"],
                    "core.models"),
    # evaluation engine and device
    **dict.fromkeys(["evaluate", "run_setting", "compute_maps", "compare_maps"], "core.evaluation"),
    "resolve_device": "core.device",
    # training recipes and loop
    **dict.fromkeys(["natural_loss", "weight_decay_loss", "madry_loss", "ig_norm_loss", "ssr_loss", "RECIPES",
                     "fit"], "training.recipes"),
    # checkpoints and data
    **dict.fromkeys(["save_checkpoint", "load_checkpoint", "CheckpointError"], "store.checkpoints"),
    **dict.fromkeys(["load_dataset", "load_tensors", "DATASETS"], "data.datasets"),
    "eval_images": "data.images",
    # a run's results
    "load_run": "analysis.run",
}

__all__ = sorted(API)


def __getattr__(name: str):
    module = API.get(name)
    if module is None:
        raise AttributeError(f"module 'smoothgeo' has no attribute {name!r}; the public names are smoothgeo.__all__")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(API))
