"""The ``attacks`` section of params.yaml: its keys, their checks, and the settings that apply to a model.

:func:`check_params` validates the section (one-line errors naming the key, the value and what is allowed);
:func:`resolve_settings` gives the fully resolved settings (one per epsilon) of one model. The attack stage
(:mod:`smoothgeo.pipeline.attack`) runs them.

Parameters: the ``attacks`` section (and the top-level ``seed``, ``device``, ``data`` and ``methods``). A
complete example::

    attacks:
      n_images: 100                 # evaluation images (the same for every model)
      batch_size: null              # images per attack batch (memory); null = all at once
      shard_size: null              # images per independent shard (torchrun); null = all images as one unit
      evaluated_methods: [SM, IG, SG, UG]   # every adversarial batch is re-evaluated on each (transfer)
      images: correct               # correct: only correctly classified images are attacked (the paper's
                                    # protocol); all: every image, the model's clean prediction standing in
                                    # for the label in the attack's label check (the toy profiles: their
                                    # barely trained models classify almost nothing correctly)
      defaults:                     # every setting starts from these
        epsilons: [0.1]             # or `epsilon: 0.1`
        step_size: 0.01
        steps: 100
        k: 100
        restarts: 2
        convention: grad_times_input
        on_reject: backtrack        # one of smoothgeo.core.attacks.ON_REJECT
        stall_window: 5             # optional; passed only when set (needs an attack() that takes it)
        surrogates: [1.0, 3.0, 10.0, 30.0]  # softplus betas of the surrogate ensemble; null = the model itself
        direction: {IG: {steps: 5}, SG: {samples: 5}, UG: {samples: 5}}   # cheaper options, direction only
        map_weight: 1.0             # targeted loss weights
        output_weight: 1.0
      settings:                     # name -> one attack (one record per epsilon: id "<name>-eps<epsilon>")
        SM-topk: {method: SM, kind: topk, epsilons: [0.05, 0.1, 0.2], models: all}
        IG-topk: {method: IG, kind: topk, steps: 30, models: all}
        SG-topk: {method: SG, kind: topk, steps: 30, models: ["natural-*", "ssr10-*", "madry0.1-*"]}
        SG50-topk: {method: SG, kind: topk, steps: 20, method_options: {samples: 50}, direction: null,
                    models: [natural-s0]}
        SM-mass_center: {method: SM, kind: mass_center, models: ["natural-*", "ssr10-*", "madry0.1-*"]}
        SM-targeted: {method: SM, kind: targeted, models: ["natural-*", "ssr10-*", "madry0.1-*"]}
        SM-random: {method: SM, kind: random, steps: 100, models: all}
        IG-random: {method: IG, kind: random, steps: 100, models: all}

A setting takes ``method`` (attacked: SM, IG, SG, UG) and ``kind`` (topk, mass_center, targeted, random), both
required, plus any key of ``defaults`` to override it, and:

* ``models``: ``all`` (default), a glob pattern, or a list of names / glob patterns (``fnmatch``; note that
  ``natural-*`` also matches ``natural-s0+softplus3``).
* ``method_options``: merged over the top-level ``methods[method]`` for the attacked method (its scores, label
  check and, unless ``direction`` says otherwise, its attack direction).
* ``direction``: the attack direction's options for this setting's method, replacing
  ``defaults.direction[method]``; ``null`` = no cheaper direction (use ``method_options``, e.g. 50 samples).
* ``evaluated_methods``: overrides ``attacks.evaluated_methods`` for this setting. The attacked method is
  always evaluated (put first when the list lacks it). Besides SM/IG/SG/UG, any
  Captum method is accepted as ``captum:<Class>`` (e.g. ``captum:GuidedBackprop``, options under the
  top-level ``methods``; see :mod:`smoothgeo.core.captum_methods`); it is evaluated (transfer), never attacked.
"""
from __future__ import annotations

import fnmatch
import inspect

from smoothgeo.core import attacks as attacks_mod
from smoothgeo.core import captum_methods
from smoothgeo.core.attacks import CONVENTIONS, KINDS
from smoothgeo.core.attributions import METHODS
from smoothgeo.store.names import check_name, check_param_names

__all__ = ["check_params", "resolve_settings", "DEFAULTS", "OPTIONAL", "SETTING_KEYS", "SECTION_KEYS"]

#: built-in values of ``attacks.defaults`` (params override each)
DEFAULTS = {"epsilons": [0.1], "step_size": 0.01, "steps": 100, "k": 100, "restarts": 1,
            "convention": "grad_times_input", "on_reject": "revert", "surrogates": [10.0], "direction": {},
            "map_weight": 1.0, "output_weight": 1.0}
#: keys passed to :func:`smoothgeo.core.attacks.attack` only where params set them (and only if it takes them)
OPTIONAL = ("stall_window", "select", "norm")
#: keys a setting may have besides those of :data:`DEFAULTS` and :data:`OPTIONAL`
SETTING_KEYS = ("method", "kind", "models", "method_options", "evaluated_methods", "epsilon", "n_images", "image_set")
#: the image sets a setting can run on: the evaluation images, or as many others disjoint from them
IMAGE_SETS = ("main", "replication")
SECTION_KEYS = ("n_images", "batch_size", "shard_size", "evaluated_methods", "images", "defaults", "settings",
                "keep_images")
#: the attackable methods (SM, IG, SG, UG): every registered method but the captum adapters
_BUILTIN = tuple(m for m in METHODS if not captum_methods.is_captum(m))


# ------------------------------------------------------------------------------------------------ validation
def _fail(key: str, value, allowed: str):
    raise ValueError(f"{key}={value!r} is invalid; allowed: {allowed}")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _on_reject_values() -> tuple:
    return tuple(getattr(attacks_mod, "ON_REJECT", ("revert", "continue")))


def _check_methods(key: str, value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        try:  # captum:<Class> names become evaluated methods (smoothgeo.core.captum_methods)
            captum_methods.ensure([m for m in value if isinstance(m, str)])
        except ValueError as exc:
            _fail(key, value, f"methods among {sorted(_BUILTIN)} or captum:<Class> ({exc})")
    if not isinstance(value, list) or not value or any(m not in METHODS for m in value):
        _fail(key, value, f"a non-empty list of methods among {sorted(_BUILTIN)} or captum:<Class> "
                          "(e.g. captum:GuidedBackprop)")
    return list(value)


def _check_options(key: str, value) -> dict:
    if not isinstance(value, dict) or any(not isinstance(k, str) for k in value):
        _fail(key, value, "a mapping of option name -> value, e.g. {samples: 50}")
    return dict(value)


def _epsilons(key: str, entry: dict, fallback, norm: str = "linf") -> list[float]:
    if "epsilon" in entry and "epsilons" in entry:
        raise ValueError(f"{key} gives both epsilon and epsilons; allowed: one of them")
    if "epsilon" in entry:
        value, name = entry["epsilon"], f"{key}.epsilon"
        value = [value] if _is_num(value) else value
    elif "epsilons" in entry:
        value, name = entry["epsilons"], f"{key}.epsilons"
    else:
        return list(fallback)
    if _is_num(value):
        value = [value]
    top = 1 if norm == "linf" else float("inf")   # an L2 radius is checked against the image size by attack()
    if not isinstance(value, list) or not value or any(not _is_num(e) or not 0 <= e <= top for e in value):
        allowed = ("in [0, 1] (L-inf radius in pixel units)" if norm == "linf"
                   else ">= 0 (L2 radius, at most sqrt(pixels x channels))")
        _fail(name, value, "a number or non-empty list of numbers " + allowed)
    if len(set(float(e) for e in value)) != len(value):
        _fail(name, value, "distinct epsilons")
    return [float(e) for e in value]


def _check_common(key: str, cfg: dict) -> None:
    """Validate the keys of :data:`DEFAULTS` present in ``cfg`` (defaults or a setting)."""
    checks = {
        "step_size": (lambda v: _is_num(v) and v > 0, "a number > 0"),
        "steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "k": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (at most the pixels in a map)"),
        "restarts": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "convention": (lambda v: v in CONVENTIONS, ", ".join(CONVENTIONS)),
        "on_reject": (lambda v: v in _on_reject_values(), ", ".join(_on_reject_values())),
        "surrogates": (lambda v: isinstance(v, list) and len(v) > 0
                       and all(b is None or (_is_num(b) and b > 0) for b in v),
                       "a non-empty list of softplus betas > 0 or null (the model's own gradient)"),
        "map_weight": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
        "output_weight": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
        "stall_window": (lambda v: _is_int(v) and 1 <= v <= 30, "an integer in [1, 30]"),
        "norm": (lambda v: v in attacks_mod.NORMS, ", ".join(attacks_mod.NORMS)),
    }
    for name, (ok, allowed) in checks.items():
        if name in cfg and not ok(cfg[name]):
            _fail(f"{key}.{name}", cfg[name], allowed)
    for name in OPTIONAL:
        if name in cfg and name not in inspect.signature(attacks_mod.attack).parameters:
            _fail(f"{key}.{name}", cfg[name], "nothing: the installed smoothgeo.core.attacks.attack has no such option")


def check_params(params: dict) -> dict:
    """Validate ``params["attacks"]``; return it with :data:`DEFAULTS` filled in (``defaults`` resolved).

    Raises:
        ValueError: one line naming the offending key, its value and the allowed values.
    """
    check_param_names(params)  # model, run and setting names become file names and DVC stage names
    section = params.get("attacks")
    if not isinstance(section, dict):
        _fail("attacks", section, "a mapping with keys " + ", ".join(SECTION_KEYS) + " (see the module docstring)")
    for key in section:
        if key not in SECTION_KEYS:
            _fail(f"attacks.{key}", section[key], "keys " + ", ".join(SECTION_KEYS))
    n = section.get("n_images")
    if not _is_int(n) or n < 1:
        _fail("attacks.n_images", n, "an integer >= 1")
    bs = section.get("batch_size")
    if bs is not None and (not _is_int(bs) or bs < 1):
        _fail("attacks.batch_size", bs, "null (all images at once) or an integer >= 1")
    shard = section.get("shard_size")
    if shard is not None and (not _is_int(shard) or shard < 1):
        _fail("attacks.shard_size", shard, "null (all images as one unit) or an integer >= 1 (images per shard)")
    if section.get("images", "correct") not in ("correct", "all"):
        _fail("attacks.images", section.get("images"), "correct (attack correctly classified images only) or all "
                                                       "(attack every image; its prediction stands in for the label)")
    evaluated = _check_methods("attacks.evaluated_methods", section.get("evaluated_methods", ["SM"]))
    defaults = section.get("defaults") or {}
    if not isinstance(defaults, dict):
        _fail("attacks.defaults", defaults, "a mapping with keys " + ", ".join(["epsilon", *DEFAULTS]))
    for key in defaults:
        if key not in DEFAULTS and key not in OPTIONAL and key != "epsilon":
            _fail(f"attacks.defaults.{key}", defaults[key], "keys " + ", ".join(["epsilon", *DEFAULTS, *OPTIONAL]))
    _check_common("attacks.defaults", defaults)
    direction = defaults.get("direction") or {}
    if not isinstance(direction, dict) or any(m not in _BUILTIN for m in direction):
        _fail("attacks.defaults.direction", direction, f"a mapping method -> options, methods among {sorted(_BUILTIN)}")
    for m, opts in direction.items():
        _check_options(f"attacks.defaults.direction.{m}", opts)
    resolved = {**DEFAULTS, **{k: v for k, v in defaults.items() if k != "epsilon"},
                "epsilons": _epsilons("attacks.defaults", defaults, DEFAULTS["epsilons"]), "direction": direction}
    methods = params.get("methods") or {}
    if not isinstance(methods, dict):
        _fail("methods", methods, "a mapping method -> attribution options")

    settings = section.get("settings")
    if not isinstance(settings, dict) or not settings:
        _fail("attacks.settings", settings, "a non-empty mapping of setting name -> {method, kind, ...}")
    allowed_keys = [*SETTING_KEYS, *DEFAULTS, *OPTIONAL]
    ids: set[str] = set()
    for name, entry in settings.items():
        key = f"attacks.settings.{name}"
        check_name(name, key)
        if not isinstance(entry, dict):
            _fail(key, entry, "a mapping with keys " + ", ".join(allowed_keys))
        for k in entry:
            if k not in allowed_keys:
                _fail(f"{key}.{k}", entry[k], "keys " + ", ".join(allowed_keys))
        if entry.get("method") not in _BUILTIN:   # captum methods are evaluated, never attacked
            _fail(f"{key}.method", entry.get("method"), ", ".join(sorted(_BUILTIN)))
        if entry.get("kind") not in KINDS:
            _fail(f"{key}.kind", entry.get("kind"), ", ".join(KINDS))
        _check_common(key, entry)
        models = entry.get("models", "all")
        if not (isinstance(models, str) or (isinstance(models, list) and models
                                            and all(isinstance(m, str) for m in models))):
            _fail(f"{key}.models", models, "'all', a glob pattern, or a non-empty list of model names / patterns")
        if "method_options" in entry:
            _check_options(f"{key}.method_options", entry["method_options"])
        if entry.get("direction") is not None:
            _check_options(f"{key}.direction", entry["direction"])
        if "evaluated_methods" in entry:
            _check_methods(f"{key}.evaluated_methods", entry["evaluated_methods"])
        m = entry.get("n_images")
        if m is not None and (not _is_int(m) or not 1 <= m <= n):
            _fail(f"{key}.n_images", m, f"null (all {n} evaluation images) or an integer in [1, {n}] (the first m)")
        if entry.get("image_set", "main") not in IMAGE_SETS:
            _fail(f"{key}.image_set", entry.get("image_set"), "main (the evaluation images) or replication (as many "
                                                              "test images, disjoint from them)")
        if entry.get("kind") == "targeted" and (m is not None or entry.get("image_set", "main") != "main"):
            _fail(f"{key}.n_images", m, "null with image_set main for the targeted kind (targets are drawn from "
                                        "the whole evaluation set)")
        if "select" in entry and entry["select"] not in attacks_mod.SELECT:
            _fail(f"{key}.select", entry["select"], ", ".join(attacks_mod.SELECT))
        for eps in _epsilons(key, entry, resolved["epsilons"], entry.get("norm", resolved.get("norm", "linf"))):
            sid = _setting_id(name, eps)
            if sid in ids:
                raise ValueError(f"{key}: setting id {sid!r} is used twice; allowed: distinct setting names")
            ids.add(sid)
    keep = section.get("keep_images")
    if keep is not None and not (isinstance(keep, list) and all(k in settings for k in keep)):
        _fail("attacks.keep_images", keep, "null (every record keeps its adversarial images) or a list of setting "
                                           f"names among {sorted(settings)}")
    return {"n_images": n, "batch_size": bs, "shard_size": shard, "evaluated_methods": evaluated, "defaults": resolved,
            "settings": settings, "keep_images": keep}


def _setting_id(name: str, epsilon: float) -> str:
    from smoothgeo.store.names import setting_id

    return setting_id(name, epsilon)


def _applies(models, model: str) -> bool:
    if models == "all":
        return True
    patterns = [models] if isinstance(models, str) else models
    return any(fnmatch.fnmatchcase(model, p) for p in patterns)


def resolve_settings(params: dict, model: str, *, smooth: bool = False) -> list[dict]:
    """The attack settings that apply to ``model``, one dict per (setting, epsilon), in params order.

    Each dict holds ``id`` (``<name>-eps<epsilon>``), ``name``, ``method``, ``kind``, ``epsilon``, every key of
    :data:`DEFAULTS` but ``epsilons`` / ``direction`` resolved, ``method_options`` (top-level ``methods`` merged
    with the setting's), ``direction_options`` (None = same as ``method_options``), ``evaluated_methods`` and
    ``evaluated_options`` (method -> top-level options). ``smooth``: the model is smooth, so it is attacked
    through its own gradient (``surrogates: [None]``).
    """
    check_name(model, "model")
    section = check_params(params)
    defaults, methods = section["defaults"], params.get("methods") or {}
    out = []
    for name, entry in section["settings"].items():
        if not _applies(entry.get("models", "all"), model):
            continue
        method, kind = entry["method"], entry["kind"]
        cfg = {k: entry.get(k, defaults[k]) for k in DEFAULTS if k not in ("epsilons", "direction")}
        cfg["extra"] = {k: entry.get(k, defaults.get(k)) for k in OPTIONAL if k in entry or k in defaults}
        surrogates = list(dict.fromkeys(cfg["surrogates"]))
        if smooth or kind == "random":
            surrogates = [None]
        options = {**(methods.get(method) or {}), **(entry.get("method_options") or {})}
        if "direction" in entry:
            direction = None if entry["direction"] is None else dict(entry["direction"])
        else:
            direction = dict(defaults["direction"].get(method) or {}) or None
        evaluated = _check_methods(f"attacks.settings.{name}.evaluated_methods",
                                   entry.get("evaluated_methods", section["evaluated_methods"]))
        if method not in evaluated:  # an attack is always evaluated on the method it attacked
            evaluated = [method, *evaluated]
        for eps in _epsilons(f"attacks.settings.{name}", entry, defaults["epsilons"],
                             entry.get("norm", defaults.get("norm", "linf"))):
            out.append({"id": _setting_id(name, eps), "name": name, "method": method, "kind": kind,
                        "epsilon": eps, **cfg, "n_images": entry.get("n_images"),
                        "image_set": entry.get("image_set", "main"), "surrogates": surrogates, "method_options": options,
                        "direction_options": direction, "evaluated_methods": evaluated,
                        "evaluated_options": {m: dict(methods.get(m) or {}) for m in evaluated}})
    return out
