"""Any Captum attribution method as an *evaluated* method (attack transfer, RQ3), under ``captum:<Class>``.

``captum:GuidedBackprop``, ``captum:DeepLift``, ``captum:GradientShap``, ``captum:Occlusion``,
``captum:InputXGradient``, ... name the class of ``captum.attr`` whose ``attribute`` gives the attribution.
:func:`register` (called on demand by :func:`ensure`, which the attack stage calls for every ``captum:`` name
it validates) adds an adapter to :data:`smoothgeo.core.attributions.METHODS`, so
:func:`smoothgeo.core.attributions.attribute`, :func:`smoothgeo.core.evaluation.compute_maps` and the attack stage's
``evaluated_methods`` accept the name like SM/IG/SG/UG::

    methods:
      captum:GradientShap: {n_samples: 20, stdevs: 0.1, seed: 0}
      captum:Occlusion: {sliding_window_shapes: [1, 4, 4], strides: 2}
    attacks:
      evaluated_methods: [SM, IG, SG, UG, "captum:GuidedBackprop", "captum:DeepLift", "captum:GradientShap"]

The adapter returns a tensor shaped like the input (Captum's attribution for the explained class, detached).
Options are passed to ``attribute`` unchanged (lists become tuples), except:

* ``seed`` (default 0): methods that draw random numbers from the global generators of torch, numpy or Python
  (GradientShap, Lime, KernelShap, FeaturePermutation, ShapleyValueSampling, ...) run with all three seeded
  with it and restored afterwards, so maps are reproducible and the caller's random state is untouched. The
  clean and the adversarial maps then use the same draws (common random numbers), unlike SG/UG, whose draws
  come from the stage's seeds.
* ``baselines``: a number means a constant baseline image (default 0, Captum's default for most methods);
  GradientShap and DeepLiftShap need a baseline distribution and get ``baselines`` (default 0) as one image
  (two copies for DeepLiftShap, which insists on two).
* ``sliding_window_shapes`` (Occlusion, required by Captum): default ``(C, 3, 3)``.

Maps: under the ``grad_times_input`` convention the gradient-like methods (Saliency, GuidedBackprop,
Deconvolution) are multiplied by the input like SM; methods whose attribution already carries the input or the
(x - baseline) factor (:data:`INCLUDES_INPUT`: DeepLift, GradientShap, IntegratedGradients, InputXGradient,
Occlusion and the other perturbation methods) are used as they are, like IG (see
:func:`smoothgeo.core.attributions.map_of`).

These methods can be evaluated, not attacked: the attacks differentiate through the attacked method
(``create_graph=True``), which Captum does not offer, so an attack setting's ``method`` stays SM/IG/SG/UG.
Needs ``captum`` (pure Python; tested with 0.9.0).
"""
from __future__ import annotations

import random
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from smoothgeo.core import attributions

__all__ = ["PREFIX", "INCLUDES_INPUT", "is_captum", "ensure", "register", "captum_attribution"]

PREFIX = "captum:"
#: Captum classes whose attribution already includes the input / (x - baseline) factor, or is a perturbation
#: score per input element (not a gradient): used as they are under the grad_times_input convention
INCLUDES_INPUT = frozenset({"IntegratedGradients", "DeepLift", "DeepLiftShap", "GradientShap", "InputXGradient",
                            "Occlusion", "FeatureAblation", "FeaturePermutation", "ShapleyValueSampling",
                            "ShapleyValues", "Lime", "KernelShap", "LRP"})
_SHAP_BASELINES = frozenset({"GradientShap", "DeepLiftShap"})


def is_captum(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def _captum_class(name: str):
    try:
        import captum.attr as ca
    except ImportError as exc:  # pragma: no cover - captum is in the requirements
        raise ValueError(f"method {name!r} needs the captum package (pip install captum==0.9.0)") from exc
    cls_name = name[len(PREFIX):]
    cls = getattr(ca, cls_name, None)
    if not (isinstance(cls, type) and hasattr(cls, "attribute")) or cls_name.startswith(("Layer", "Neuron")):
        raise ValueError(f"method {name!r} is invalid; allowed: captum:<an input attribution class of "
                         "captum.attr>, e.g. captum:GuidedBackprop, captum:DeepLift, captum:GradientShap, "
                         "captum:Occlusion")
    return cls


def _tupled(v):
    return tuple(_tupled(e) for e in v) if isinstance(v, list) else v


def captum_attribution(cls_name: str, model: nn.Module, x: Tensor, target=None, *, seed: int = 0,
                       **options) -> Tensor:
    """``captum.attr.<cls_name>(model).attribute(x, target=..., **options)``, detached, shaped like ``x``."""
    cls = _captum_class(PREFIX + cls_name)
    target = attributions.resolve_target(model, x, target)
    options = {k: _tupled(v) for k, v in options.items()}
    if cls_name in _SHAP_BASELINES or "baselines" in options:
        base = options.get("baselines", 0.0)
        if isinstance(base, (int, float)):  # DeepLiftShap insists on two baseline images at least
            shape = ((2 if cls_name == "DeepLiftShap" else 1, *x.shape[1:]) if cls_name in _SHAP_BASELINES
                     else x.shape)
            options["baselines"] = torch.full(shape, float(base), device=x.device, dtype=x.dtype)
    if cls_name == "Occlusion":
        options.setdefault("sliding_window_shapes", (x.shape[1], 3, 3))
    from captum.attr._utils.attribution import GradientAttribution

    inputs = x.detach().clone().requires_grad_(issubclass(cls, GradientAttribution))
    devices = [x.device] if x.device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # captum announces every hook it sets; nothing to act on
            warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
            torch.manual_seed(int(seed))       # captum draws from torch's, numpy's and Python's generators
            np.random.seed(int(seed) % 2 ** 32)
            random.seed(int(seed))
            with torch.enable_grad():
                attr = cls(model).attribute(inputs, target=target, **options)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return attr.detach()


def register(name: str) -> str:
    """Add ``name`` (``captum:<Class>``) to :data:`smoothgeo.core.attributions.METHODS`; returns ``name``."""
    _captum_class(name)
    if name in attributions.METHODS:
        return name
    cls_name = name[len(PREFIX):]

    def method(model, x, target=None, *, create_graph: bool = False, **options):
        if create_graph:
            raise ValueError(f"method {name!r} can be evaluated but not attacked (no create_graph); "
                             "attack with SM, IG, SG or UG")
        return captum_attribution(cls_name, model, x, target, **options)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Captum's {cls_name} (see smoothgeo.core.captum_methods)."
    attributions.METHODS[name] = method
    if cls_name in INCLUDES_INPUT:
        attributions.INCLUDES_INPUT.add(name)
    return name


def ensure(names):
    """Register every ``captum:`` name among ``names`` (a name or a list); returns ``names`` unchanged."""
    for name in [names] if isinstance(names, str) else list(names):
        if is_captum(name):
            register(name)
    return names
