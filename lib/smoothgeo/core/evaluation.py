"""The evaluation engine: attack with one setting, re-evaluate every attribution method, one tidy row per image.

* :func:`run_setting` is the one engine: it runs one attack setting (a dict of :func:`make_setting`, or of
  :func:`smoothgeo.pipeline.attack_config.resolve_settings`) on a batch of images and compares the clean and
  adversarial maps of every *evaluated* method on the original model; it returns the per-image record tensors
  and the rows (columns :data:`COLUMNS`). The attack stage (:mod:`smoothgeo.pipeline.attack`) calls it once per
  setting (and shard); evaluated methods other than the attacked one measure how the attack transfers (RQ3).
* :func:`make_setting` builds a complete setting dict from keyword defaults (tests, notebooks).
* :func:`evaluate` is a thin loop for interactive use: one setting per (attacked method, kind, epsilon), each
  through :func:`run_setting`; the rows have the attack stage's schema. Resuming is the stage's job.
* :func:`noise_floor` compares two independent clean evaluations of each method (the floor of SG/UG's own
  randomness; deterministic methods give the identity values).
* :func:`summarise` turns a results frame into mean and standard error per group, for tables.

Conventions:

* The explained class is the model's prediction c on the clean image (docs/method.md). ``attacked`` says c == y
  (only those images are attacked, unless ``attack_all``; the others appear with ``x_adv = x``).
  ``clean_conf`` / ``adv_conf`` are the softmax probabilities of c at x and at x_adv; ``label_kept`` is
  ``argmax model(x_adv) == c``.
* Surrogates: the attack runs through each softplus beta of ``setting["surrogates"]`` (per image the worst, i.e.
  lowest-Kendall, result wins; ``member`` / ``beta`` name the winner, beta NaN = the model's own gradient).
* SG and UG are random: the clean and adversarial maps use *independent* noise draws (seeded, so a run is
  reproducible). Their metrics therefore include the methods' own noise; compare with :func:`noise_floor`.
  The clean draw of a method is shared by all settings (``clean_maps``), each setting's adversarial draw has its
  own seed.
* Every random draw is seeded from ``seed`` and the setting's id (``derive_seed(seed, "attack", id)``, ``"adv",
  id, method``, ``"clean", method``, ``"target", ...``), not its position in a loop, so a setting gives the same
  rows whether it runs alone, in a sweep, or after a resume.
* Targeted: the target of image i is the clean map of image ``targets[i]`` of ``target_pool``
  (:mod:`smoothgeo.core.targets`). ``target_distance`` is the mean squared per-pixel distance from the
  adversarial map to the target image's map under the evaluated method, ``clean_target_distance`` the same from
  the clean map (the starting point); NaN for the other kinds.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from smoothgeo.core.attacks import (KENDALL_BLOCK, KINDS, RANDOM_METHODS, attack, check_images, derive_seed, eval_mode)
from smoothgeo.core.attributions import METHODS, attribute, make_generator, map_of
from smoothgeo.core.metrics import METRICS

__all__ = ["run_setting", "make_setting", "evaluate", "noise_floor", "summarise", "compute_maps", "compare_maps",
           "fingerprint", "as_table", "COLUMNS", "DTYPES", "METRIC_COLUMNS", "SETTING_DEFAULTS"]

METRIC_COLUMNS = ["topk", "kendall", "spearman", "mass_center", "cosine", "lens_topk"]
#: the columns of every results table (the attack stage's ``results/attacks/<model>.csv.gz``), in order
COLUMNS = ["model", "setting", "attacked_method", "kind", "epsilon", "image", "label", "evaluated_method",
           *METRIC_COLUMNS, "score", "target_distance", "clean_target_distance", "linf", "l2", "attacked",
           "label_kept", "clean_conf", "adv_conf", "restart", "member", "beta", "accepted_steps", "rejected_steps", "stalled",
           "stalled_runs", "zero_directions", "kendall_worst"]
#: their dtypes (nullable ints / bools for the attack diagnostics, which may be unknown)
DTYPES = {"model": "str", "setting": "str", "attacked_method": "str", "kind": "str", "epsilon": "float64",
          "image": "int64", "label": "int64", "evaluated_method": "str",
          **{c: "float64" for c in METRIC_COLUMNS}, "score": "float64", "target_distance": "float64",
          "clean_target_distance": "float64", "linf": "float64", "l2": "float64", "attacked": "bool", "label_kept": "bool",
          "clean_conf": "float64", "adv_conf": "float64", "restart": "Int64", "member": "Int64",
          "beta": "float64", "accepted_steps": "Int64", "rejected_steps": "Int64", "stalled": "boolean",
          "stalled_runs": "Int64", "zero_directions": "Int64", "kendall_worst": "float64"}

#: per-image diagnostics of :class:`smoothgeo.core.attacks.AttackResult` kept in the record (where reported)
_DIAGNOSTICS = ("attacked", "label_kept", "score", "kendall", "restart", "rejected_steps", "zero_directions",
                "linf", "accepted_steps", "stalled", "stalled_runs", "kendall_worst")

#: the keyword defaults of :func:`make_setting` (those of params ``attacks.defaults`` where the stage has one)
SETTING_DEFAULTS = {"method": "SM", "kind": "topk", "epsilon": 0.1, "step_size": 0.01, "steps": 100, "k": 100,
                    "restarts": 1, "convention": "grad_times_input", "on_reject": "revert", "surrogates": [10.0],
                    "map_weight": 1.0, "output_weight": 1.0, "extra": {}, "method_options": {},
                    "direction_options": None, "evaluated_methods": None, "evaluated_options": None,
                    "n_images": None, "image_set": "main"}


def compute_maps(model: nn.Module, x: Tensor, target: Tensor, method: str, *, options: dict | None = None,
                 seed: int = 0, convention: str = "grad_times_input", batch_size: int | None = None) -> Tensor:
    """(N, H, W) maps of ``method`` on ``model`` at ``x`` for classes ``target``, detached.

    SG/UG draw from one generator seeded with ``seed`` (batches consume it in order).
    """
    gen = make_generator(x.device, seed) if method in RANDOM_METHODS else None
    size = x.shape[0] if batch_size is None else int(batch_size)
    out = []
    for i in range(0, x.shape[0], size):
        xb = x[i:i + size]
        attr = attribute(method, model, xb, target[i:i + size], generator=gen, **(options or {}))
        out.append(map_of(method, attr.detach(), xb, convention=convention))
    return torch.cat(out)


def compare_maps(clean: Tensor, adv: Tensor, k: int) -> dict[str, np.ndarray]:
    """Every metric of :mod:`smoothgeo.core.metrics` between (N, H, W) maps, as float64 numpy arrays."""
    out = {}
    for name in METRIC_COLUMNS:
        fn = METRICS[name]
        if name in ("topk", "lens_topk"):
            value = fn(clean, adv, k)
        elif name == "kendall":
            value = fn(clean, adv, max_elements=KENDALL_BLOCK)  # same value, faster
        else:
            value = fn(clean, adv)
        out[name] = value.detach().double().cpu().numpy()
    return out


def fingerprint(*tensors) -> str:
    """A short hash of tensors (shape, dtype, exact bytes): the key under which partial results are resumed."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def as_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the columns :data:`COLUMNS` in order, dtypes :data:`DTYPES` and a fresh index."""
    return frame[COLUMNS].astype(DTYPES).reset_index(drop=True)


def _as_list(v) -> list:
    return [v] if isinstance(v, (str, int, float)) else list(v)


# ---------------------------------------------------------------------------------------------------- settings
def make_setting(**overrides) -> dict:
    """A complete setting dict for :func:`run_setting`, with the keys of
    :func:`smoothgeo.pipeline.attack_config.resolve_settings`: :data:`SETTING_DEFAULTS` with ``overrides``.

    ``name`` defaults to ``<method>-<kind>`` and ``id`` to ``<name>-eps<epsilon>`` (the format of
    :func:`smoothgeo.store.names.setting_id`; the id seeds the setting's draws). The attacked method is always
    evaluated (put first when ``evaluated_methods`` lacks it); ``evaluated_options`` (method -> options)
    defaults to ``method_options`` for the attacked method and ``{}`` for the others.

    Raises:
        ValueError: an unknown key, method or kind.
    """
    unknown = set(overrides) - set(SETTING_DEFAULTS) - {"id", "name"}
    if unknown:
        raise ValueError(f"make_setting got keys {sorted(unknown)}; allowed: id, name, {', '.join(SETTING_DEFAULTS)}")
    s = {**SETTING_DEFAULTS, **overrides}
    method, kind, epsilon = s["method"], s["kind"], float(s["epsilon"])
    evaluated = _as_list(s["evaluated_methods"] if s["evaluated_methods"] is not None else [method])
    if method not in evaluated:  # an attack is always evaluated on the method it attacked
        evaluated = [method, *evaluated]
    _check_names(evaluated, [kind])
    name = s.get("name") or f"{method}-{kind}"
    given = s["evaluated_options"] or {}
    options = dict(s["method_options"] or {})
    return {"id": s.get("id") or f"{name}-eps{epsilon:g}", "name": name, "method": method, "kind": kind,
            "epsilon": epsilon, **{k: s[k] for k in ("step_size", "steps", "k", "restarts", "convention",
                                                     "on_reject")},
            "surrogates": list(s["surrogates"]), "map_weight": s["map_weight"], "output_weight": s["output_weight"],
            "extra": dict(s["extra"]), "method_options": options,
            "direction_options": None if s["direction_options"] is None else dict(s["direction_options"]),
            "evaluated_methods": evaluated, "n_images": s["n_images"], "image_set": s["image_set"],
            "evaluated_options": {m: dict(given.get(m, options if m == method else {})) for m in evaluated}}


# ------------------------------------------------------------------------------------------------------ engine
def _attack(model, x, y, setting: dict, *, seed: int, target_map, batch_size) -> dict[str, Tensor]:
    """Run ``setting``'s attack (its surrogate ensemble included); per-image tensors keyed by name."""
    surrogates = setting["surrogates"]
    ensemble = {"beta": surrogates[0]} if len(surrogates) == 1 else {"surrogates": surrogates}
    result = attack(model, x, y, method=setting["method"], kind=setting["kind"], epsilon=setting["epsilon"],
                    step_size=setting["step_size"], steps=setting["steps"], k=setting["k"],
                    restarts=setting["restarts"], method_options=setting["method_options"],
                    direction_options=setting["direction_options"], target_map=target_map,
                    convention=setting["convention"], map_weight=setting["map_weight"],
                    output_weight=setting["output_weight"], on_reject=setting["on_reject"],
                    batch_size=batch_size, progress=False, **setting["extra"],
                    seed=derive_seed(seed, "attack", setting["id"]), **ensemble)
    out = {name: getattr(result, name) for name in ("x_adv", *_DIAGNOSTICS)
           if isinstance(getattr(result, name, None), Tensor)}
    member = getattr(result, "member", None)
    out["member"] = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if member is None else member.long()
    betas = torch.tensor([math.nan if b is None else float(b) for b in surrogates], dtype=torch.float32)
    out["beta"] = betas[out["member"].cpu()]
    return out


def _record(x_adv: Tensor, diag: dict[str, Tensor], y: Tensor, pred: Tensor, offset: int,
            targets: Tensor | None) -> dict[str, Tensor]:
    """The setting's record: CPU tensors, bools / float32 / long."""
    n = x_adv.shape[0]
    record = {"x_adv": x_adv.float().cpu(), "image": torch.arange(offset, offset + n), "label": y.long().cpu(),
              "pred": pred.long().cpu()}
    for name, value in diag.items():
        value = value.detach().cpu()
        if name in ("attacked", "label_kept", "stalled"):
            value = value.bool()
        elif value.is_floating_point():
            value = value.float()
        else:
            value = value.long()
        record[name] = value
    if targets is not None:
        record["target_image"] = targets.long().cpu()
    return record


def _method_columns(model, x, x_adv, pred, em: str, setting: dict, *, seed: int, batch_size, clean_maps: dict,
                    targets: Tensor | None, pool: tuple[Tensor, Tensor]) -> dict:
    """The columns of evaluated method ``em``: its metrics and (targeted) distances to the target maps."""
    from smoothgeo.core.targets import target_distance, target_maps  # here: core.targets imports compute_maps

    opts, convention, n = setting["evaluated_options"][em], setting["convention"], x.shape[0]
    key = ("clean", em, convention)  # one clean draw per method, shared by all settings
    if key not in clean_maps:
        clean_maps[key] = compute_maps(model, x, pred, em, options=opts, seed=derive_seed(seed, "clean", em),
                                       convention=convention, batch_size=batch_size)
    clean = clean_maps[key]
    adv_map = compute_maps(model, x_adv, pred, em, options=opts, seed=derive_seed(seed, "adv", setting["id"], em),
                           convention=convention, batch_size=batch_size)
    metrics = compare_maps(clean, adv_map, setting["k"])
    dist = clean_dist = np.full(n, np.nan)
    if targets is not None:
        key = ("target", em, convention)
        if key not in clean_maps:
            clean_maps[key] = target_maps(model, *pool, em, options=opts, seed=derive_seed(seed, "target", em),
                                          convention=convention, batch_size=batch_size, index=targets)[1]
        dist = target_distance(adv_map, clean_maps[key]).double().cpu().numpy()
        clean_dist = target_distance(clean, clean_maps[key]).double().cpu().numpy()
    return {"evaluated_method": em, **metrics, "target_distance": dist, "clean_target_distance": clean_dist}


def _shared_columns(model_name: str, setting: dict, x: Tensor, x_adv: Tensor, record: dict[str, Tensor], *,
                    label_kept: Tensor, clean_conf: Tensor, adv_conf: Tensor, offset: int) -> dict:
    """The columns every evaluated method of a setting shares: the setting, the image, the attack's outcome."""
    n = x.shape[0]

    def col(name, kind):  # a diagnostic the installed attack() does not report is left empty
        v = record.get(name)
        return pd.array([pd.NA] * n if v is None else v.numpy().tolist(), dtype=kind)

    return {"model": model_name, "setting": setting["id"], "attacked_method": setting["method"],
            "kind": setting["kind"], "epsilon": setting["epsilon"], "image": np.arange(offset, offset + n),
            "label": record["label"].numpy(), "score": record["score"].double().numpy(),
            "linf": (x_adv - x).flatten(1).abs().amax(1).double().cpu().numpy(),
            "l2": (x_adv - x).flatten(1).norm(dim=1).double().cpu().numpy(),
            "attacked": record["attacked"].numpy(), "label_kept": label_kept.cpu().numpy(),
            "clean_conf": clean_conf.double().cpu().numpy(), "adv_conf": adv_conf.double().cpu().numpy(),
            "beta": record["beta"].double().numpy(),
            **{name: col(name, DTYPES[name]) for name in ("restart", "member", "accepted_steps", "rejected_steps",
                                                           "stalled", "stalled_runs", "zero_directions")}}


def run_setting(model: nn.Module, x: Tensor, y: Tensor, setting: dict, *, model_name: str, seed: int, batch_size,
                clean_maps: dict, targets: Tensor | None = None, offset: int = 0,
                target_pool: tuple[Tensor, Tensor] | None = None,
                attack_all: bool = False) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """Attack with one setting and evaluate every evaluated method; returns (record tensors, rows).

    Args:
        model: the original model, in eval mode (the caller's :func:`~smoothgeo.core.attacks.eval_mode`).
        x, y: images ``offset, offset + 1, ...`` of the evaluation set and their true labels.
        setting: a complete setting (:func:`make_setting`, or the stage's ``resolve_settings``).
        model_name: the ``model`` column.
        seed: base seed of every draw (see the module docstring).
        batch_size: images per attack / attribution batch (memory); None = all at once.
        clean_maps: cache of clean (and target) maps, keyed by method and convention: share one dict only
            between settings of the same images, seed and ``evaluated_options`` (fill a new dict otherwise).
        targets: (targeted kind) index of each image's target image in ``target_pool`` (default ``(x, y)``).
        attack_all: attack every image, the model's clean prediction standing in for its label in the attack's
            label check (the record keeps the true labels, which also pick the targets).
    Returns:
        The record (``x_adv``, ``image``, ``label``, ``pred``, the attack's diagnostics, ``member``, ``beta``,
        ``target_image`` where targeted; CPU tensors) and one row per (image, evaluated method) in that order,
        columns :data:`COLUMNS`.
    """
    from smoothgeo.core.targets import target_maps  # here: core.targets imports compute_maps from this module

    sid = setting["id"]
    pool = (x, y) if target_pool is None else target_pool
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    pred = probs.argmax(1)
    clean_conf = probs.gather(1, pred.view(-1, 1)).flatten()
    attack_target = None
    if setting["kind"] == "targeted":
        _, attack_target = target_maps(model, *pool, setting["method"], options=setting["method_options"],
                                       seed=derive_seed(seed, "target", sid), convention=setting["convention"],
                                       batch_size=batch_size, index=targets)
    diag = _attack(model, x, pred if attack_all else y, setting, seed=seed, target_map=attack_target,
                   batch_size=batch_size)
    x_adv = diag.pop("x_adv").detach()
    with torch.no_grad():
        adv_probs = torch.softmax(model(x_adv), 1)
    adv_conf = adv_probs.gather(1, pred.view(-1, 1)).flatten()
    label_kept = adv_probs.argmax(1) == pred
    record = _record(x_adv, diag, y, pred, offset, targets)
    shared = _shared_columns(model_name, setting, x, x_adv, record, label_kept=label_kept, clean_conf=clean_conf,
                             adv_conf=adv_conf, offset=offset)
    # the ensemble's worst Kendall over its runs (each run's own adversarial image), for the attacked method only:
    # the per-metric worst case beside the top-k-selected image the other columns describe
    worst = record["kendall_worst"].double().numpy() if "kendall_worst" in record else np.full(x.shape[0], np.nan)
    frames = [pd.DataFrame({**shared, **_method_columns(model, x, x_adv, pred, em, setting, seed=seed,
                                                        batch_size=batch_size, clean_maps=clean_maps,
                                                        targets=targets, pool=pool),
                            "kendall_worst": worst if em == setting["method"] else np.full(x.shape[0], np.nan)})
              for em in setting["evaluated_methods"]]
    order = {m: i for i, m in enumerate(setting["evaluated_methods"])}
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.assign(_em=frame.evaluated_method.map(order)).sort_values(["image", "_em"], kind="stable")
    return record, as_table(frame.drop(columns="_em"))


def _check_names(methods: Sequence[str], kinds: Sequence[str] = (), options: Sequence[dict] = ()) -> None:
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown attribution method {name!r}; methods must be among {sorted(METHODS)}")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown attack kind {kind!r}; kinds must be among {list(KINDS)}")
    unknown = set().union(*options) - set(METHODS) if options else set()
    if unknown:
        raise ValueError(f"method_options / direction_options have keys {sorted(unknown)}; "
                         f"keys must be method names {sorted(METHODS)}")


def evaluate(model: nn.Module, x: Tensor, y, *, attacked_methods: str | Sequence[str] = "SM",
             evaluated_methods: Sequence[str] | None = None, kinds: Sequence[str] = ("topk", "random"),
             epsilons: Sequence[float] = (0.1,), step_size: float = 0.01, steps: int = 100, k: int = 100,
             beta: float | None = 10.0, restarts: int = 1, seed: int = 0,
             method_options: dict[str, dict] | None = None, direction_options: dict[str, dict] | None = None,
             targets=None, convention: str = "grad_times_input", map_weight: float = 1.0,
             output_weight: float = 1.0, on_reject: str = "backtrack", batch_size: int | None = None,
             progress: bool = True, stall_window: int = 5, surrogates: Sequence[float | None] | None = None,
             select: str = "kendall", random_steps: int | None = None, attack_all: bool = False,
             model_name: str = "model") -> pd.DataFrame:
    """Attack and evaluate: :func:`run_setting` for each (attacked method, kind, epsilon); columns :data:`COLUMNS`.

    Each unit is the setting ``make_setting(name=f"{method}-{kind}", ...)`` (id ``<method>-<kind>-eps<eps>``),
    so it gives the rows the attack stage gives a setting of that name and configuration.

    Args:
        model: the original model (metrics, label check); x: (N, C, H, W) images in [0, 1]; y: (N,) labels.
        attacked_methods: method(s) the attack differentiates through ("SM", "IG", "SG", "UG").
        evaluated_methods: methods whose maps are compared (the attacked one is always among them, first when
            missing); None = the attacked method. Others give transfer.
        kinds, epsilons: attack kinds (see :mod:`smoothgeo.core.attacks`) and L-inf radii.
        beta, surrogates: the softplus surrogate(s) of the attack (``surrogates`` wins when given); the random
            kind uses none.
        targets: (targeted kind) index of each image's target image; default
            :func:`smoothgeo.core.targets.pick_targets` of ``y``.
        step_size, steps, k, restarts, convention, map_weight, output_weight, on_reject, stall_window, select,
            batch_size: passed to :func:`smoothgeo.core.attacks.attack` (``k`` and ``convention`` also for metrics).
        random_steps: noise draws (per restart) of ``kind="random"``; None = ``steps``. Lets calls with per-method
            ``steps`` (e.g. SM 100, IG 30) give every method the same random floor.
        method_options: per method name, its attribution options (attacking and evaluating alike);
            direction_options: per method name, overrides for the attack direction only.
        seed, attack_all, model_name: as in :func:`run_setting`. progress: a tqdm bar over the units.
    Returns:
        Rows ordered by attacked method, kind, epsilon (in the given orders), image, evaluated method.
    """
    from tqdm.auto import tqdm

    y = check_images(x, y, model=model)
    attacked_methods, kinds = _as_list(attacked_methods), _as_list(kinds)
    evaluated = _as_list(attacked_methods if evaluated_methods is None else evaluated_methods)
    method_options, direction_options = dict(method_options or {}), dict(direction_options or {})
    _check_names(attacked_methods + evaluated, kinds, [method_options, direction_options])
    if "targeted" in kinds and targets is None:
        from smoothgeo.core.targets import pick_targets  # here: core.targets imports compute_maps from this module
        targets = pick_targets(y)
    settings = [make_setting(method=am, kind=kind, epsilon=eps, step_size=step_size, k=k, restarts=restarts,
                             steps=random_steps if kind == "random" and random_steps is not None else steps,
                             convention=convention, on_reject=on_reject, map_weight=map_weight,
                             output_weight=output_weight, extra={"stall_window": stall_window, "select": select},
                             surrogates=[None] if kind == "random" else list(surrogates or [beta]),
                             method_options=method_options.get(am), direction_options=direction_options.get(am),
                             evaluated_methods=evaluated, evaluated_options=method_options)
                for am in attacked_methods for kind in kinds for eps in _as_list(epsilons)]
    x, clean_maps, frames = x.detach(), {}, []
    with eval_mode(model):
        for setting in tqdm(settings, disable=not progress, desc="attack units"):
            frames.append(run_setting(model, x, y, setting, model_name=model_name, seed=seed, batch_size=batch_size,
                                      clean_maps=clean_maps, attack_all=attack_all,
                                      targets=targets if setting["kind"] == "targeted" else None)[1])
    return as_table(pd.concat(frames, ignore_index=True))


def noise_floor(model: nn.Module, x: Tensor, y, *, methods: Sequence[str] = ("SM", "IG", "SG", "UG"),
                method_options: dict[str, dict] | None = None, k: int = 100, seed: int = 0,
                convention: str = "grad_times_input", batch_size: int | None = None,
                model_name: str = "model") -> pd.DataFrame:
    """Metrics between two independent clean evaluations of each method; columns :data:`COLUMNS`.

    Rows have ``setting="noise_floor"``, ``kind="noise_floor"``, ``epsilon=0``, ``attacked_method="none"``,
    ``linf=0``, no attack diagnostics. Deterministic methods (SM, IG) are evaluated once and compared with
    themselves (top-k 1, Kendall 1, dislocation 0).
    """
    y = check_images(x, y, model=model)
    methods = _as_list(methods)
    _check_names(methods)
    if not 1 <= k <= x.shape[-1] * x.shape[-2]:
        raise ValueError(f"k must be in [1, {x.shape[-1] * x.shape[-2]}] (pixels in a map), got {k}")
    method_options = method_options or {}
    n = x.shape[0]
    frames = []
    with eval_mode(model):
        with torch.no_grad():
            probs = torch.softmax(model(x.detach()), 1)
        pred = probs.argmax(1)
        conf = probs.gather(1, pred.view(-1, 1)).flatten().double().cpu().numpy()
        shared = {"model": model_name, "setting": "noise_floor", "attacked_method": "none", "kind": "noise_floor",
                  "epsilon": 0.0, "image": np.arange(n), "label": y.long().cpu().numpy(), "score": np.nan,
                  "target_distance": np.nan, "clean_target_distance": np.nan, "linf": np.zeros(n), "l2": np.zeros(n),
                  "attacked": (pred == y).cpu().numpy(), "label_kept": True, "clean_conf": conf, "adv_conf": conf,
                  "beta": np.nan, **{c: pd.array([pd.NA] * n, dtype=DTYPES[c]) for c in
                                     ("restart", "member", "accepted_steps", "rejected_steps", "stalled",
                                      "stalled_runs", "zero_directions")}}
        for m in methods:
            maps = [compute_maps(model, x, pred, m, options=method_options.get(m),
                                 seed=derive_seed(seed, "floor", m, draw), convention=convention,
                                 batch_size=batch_size)
                    for draw in range(2 if m in RANDOM_METHODS else 1)]
            frames.append(pd.DataFrame({**shared, "evaluated_method": m, **compare_maps(maps[0], maps[-1], k),
                                        "kendall_worst": np.nan}))
    return as_table(pd.concat(frames, ignore_index=True))


def summarise(frame: pd.DataFrame, *, by: Sequence[str] = ("kind", "epsilon", "attacked_method", "evaluated_method"),
              metrics: Sequence[str] = tuple(METRIC_COLUMNS), only_attacked: bool = True) -> pd.DataFrame:
    """Mean and standard error (``sem``, ddof 1) of each metric per group, plus ``n`` rows per group.

    Args:
        frame: rows of :func:`evaluate` / :func:`noise_floor`.
        by: grouping columns.
        metrics: columns to summarise.
        only_attacked: drop rows of images that were not attacked (misclassified) first.
    Returns:
        One row per group: the ``by`` columns, ``n``, then ``<metric>_mean`` and ``<metric>_sem``.
    """
    if only_attacked:
        frame = frame[frame["attacked"]]
    by, metrics = list(by), list(metrics)
    grouped = frame.groupby(by, sort=False)
    agg = grouped[metrics].agg(["mean", "sem"])
    agg.columns = [f"{metric}_{stat}" for metric, stat in agg.columns]
    agg.insert(0, "n", grouped.size())
    return agg.reset_index()
