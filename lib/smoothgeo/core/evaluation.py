"""The evaluation engine: attack, re-evaluate every attribution method, one tidy row per image and setting.

* :func:`evaluate` runs :func:`smoothgeo.core.attacks.attack` for every unit (attacked method, kind, epsilon) and
  compares clean and adversarial maps of every *evaluated* method on the original model. Evaluated methods other
  than the attacked one measure how the attack transfers (RQ3).
* :func:`noise_floor` compares two independent clean evaluations of each method (the floor of SG/UG's own
  randomness; deterministic methods give the identity values).
* :func:`summarise` turns a results frame into mean and standard error per group, for tables.

Conventions:

* The explained class is the model's prediction c on the clean image (docs/method.md). ``attacked`` says c == y
  (only those images are attacked; the others appear with ``x_adv = x``). ``clean_conf`` / ``adv_conf`` are the
  softmax probabilities of c at x and at x_adv; ``label_kept`` is ``argmax model(x_adv) == c``.
* SG and UG are random: the clean and adversarial maps use *independent* noise draws (seeded, so a run is
  reproducible). Their metrics therefore include the methods' own noise; compare with :func:`noise_floor`.
  The clean draw of a method is shared by all units, each unit's adversarial draw has its own seed.
* Every random draw is seeded from ``seed`` and the unit's identity (not its position in the loop), so a unit
  gives the same rows whether it runs alone, in a sweep, or after a resume.
* Resuming: with ``partial_path`` the rows computed so far are written (atomically) after each unit, with a
  ``config_hash`` column; a re-run skips the units already in the file. The hash covers everything that changes
  a unit's rows (model weights, images, labels, evaluated methods, attack settings, seed), but not the lists
  of units, so adding an epsilon or a kind later resumes too. A file written under another configuration
  raises ``ValueError`` (delete it or pass another path); it is never silently mixed. The configuration itself
  is written next to it as ``<partial_path>.config.json`` for humans.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from smoothgeo.core.attacks import (KENDALL_BLOCK, KINDS, RANDOM_METHODS, attack, check_images, derive_seed, eval_mode)
from smoothgeo.core.attributions import METHODS, attribute, make_generator, map_of
from smoothgeo.store.atomic import atomic_write_csv, atomic_write_json
from smoothgeo.core.metrics import METRICS

__all__ = ["evaluate", "noise_floor", "summarise", "compute_maps", "compare_maps", "fingerprint", "COLUMNS",
           "METRIC_COLUMNS"]

METRIC_COLUMNS = ["topk", "kendall", "spearman", "mass_center", "cosine"]
COLUMNS = ["image", "kind", "epsilon", "attacked_method", "evaluated_method", *METRIC_COLUMNS, "linf",
           "label_kept", "attacked", "clean_conf", "adv_conf"]
_DTYPES = {"image": "int64", "kind": "str", "epsilon": "float64", "attacked_method": "str",
           "evaluated_method": "str", **{c: "float64" for c in METRIC_COLUMNS}, "linf": "float64",
           "label_kept": "bool", "attacked": "bool", "clean_conf": "float64", "adv_conf": "float64"}


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
        if name == "topk":
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


def _frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS) if not isinstance(rows, pd.DataFrame) else rows[COLUMNS]
    return frame.astype(_DTYPES).reset_index(drop=True)


def _rows(*, n, kind, epsilon, attacked_method, evaluated_method, metrics, linf, label_kept, attacked, clean_conf,
          adv_conf) -> list[dict]:
    return [{"image": i, "kind": kind, "epsilon": float(epsilon), "attacked_method": attacked_method,
             "evaluated_method": evaluated_method, **{m: float(metrics[m][i]) for m in METRIC_COLUMNS},
             "linf": float(linf[i]), "label_kept": bool(label_kept[i]), "attacked": bool(attacked[i]),
             "clean_conf": float(clean_conf[i]), "adv_conf": float(adv_conf[i])} for i in range(n)]


def _unit_keys(frame: pd.DataFrame) -> list[tuple]:
    return list(zip(frame.attacked_method, frame.kind, frame.epsilon.astype(float)))


def _as_list(v) -> list:
    return [v] if isinstance(v, (str, int, float)) else list(v)


def _load_partial(path: Path, config_hash: str, config: dict, on_mismatch: str = "raise") -> pd.DataFrame:
    if not path.exists():
        return _frame([])
    frame = pd.read_csv(path, dtype={"config_hash": str})  # pandas >= 3 parses floats round-trip exactly
    missing = set(COLUMNS + ["config_hash"]) - set(frame.columns)
    if missing:
        raise ValueError(f"{path} is not a partial results file of evaluate() (missing columns {sorted(missing)}); "
                         "delete it or pass another partial_path")
    hashes = set(frame["config_hash"].astype(str))
    if hashes - {config_hash}:
        detail = ""
        side = Path(str(path) + ".config.json")
        if side.exists():
            old = json.loads(side.read_text())
            diff = sorted(key for key in set(old) | set(config) if old.get(key) != config.get(key))
            detail = f" (differs in: {', '.join(diff)})"
        if on_mismatch == "restart":
            import warnings
            warnings.warn(f"partial results in {path} were computed with a different configuration{detail}; "
                          "starting over (the file will be overwritten)", stacklevel=3)
            return _frame([])
        raise ValueError(f"partial results in {path} were computed with a different configuration{detail}; "
                         "delete the file to start over, or pass another partial_path")
    return _frame(frame)


def evaluate(model: nn.Module, x: Tensor, y, *, attacked_methods: str | Sequence[str] = "SM",
             evaluated_methods: Sequence[str] | None = None, kinds: Sequence[str] = ("topk", "random"),
             epsilons: Sequence[float] = (0.1,), step_size: float = 0.01, steps: int = 100, k: int = 100,
             beta: float | None = 10.0, restarts: int = 1, seed: int = 0,
             method_options: dict[str, dict] | None = None, direction_options: dict[str, dict] | None = None,
             target_map=None,
             convention: str = "grad_times_input", map_weight: float = 1.0, output_weight: float = 1.0,
             on_reject: str = "backtrack", batch_size: int | None = None, partial_path=None,
             on_mismatch: str = "raise", progress: bool = True, stall_window: int = 5,
             surrogates: Sequence[float | None] | None = None, select: str = "kendall",
             random_steps: int | None = None) -> pd.DataFrame:
    """Attack and evaluate; one row per (unit, image, evaluated method), columns :data:`COLUMNS`.

    Args:
        model: the original model (metrics, label check); the attack builds its own surrogate (``beta``).
        x: (N, C, H, W) images in [0, 1]; y: (N,) labels.
        attacked_methods: method(s) the attack differentiates through ("SM", "IG", "SG", "UG").
        evaluated_methods: methods whose maps are compared; None = the attacked methods. Others give transfer.
        kinds: attack kinds (see :mod:`smoothgeo.core.attacks`); "targeted" needs ``target_map``.
        epsilons: L-inf radii.
        step_size, steps, k, beta, restarts, target_map, convention, map_weight, output_weight, on_reject,
            stall_window, surrogates, select, batch_size: passed to :func:`smoothgeo.core.attacks.attack` (``k`` and
            ``convention`` also for metrics).
        seed: base seed; each unit and each evaluation draw derives its own.
        random_steps: noise draws (per restart) of ``kind="random"``; None = ``steps``. Lets calls with per-method
            ``steps`` (e.g. SM 100, IG 30) give every method the same random floor.
        method_options: per method name, its attribution options, e.g. ``{"IG": {"steps": 50},
            "SG": {"noise_level": 0.1, "samples": 50}}``; used for attacking and evaluating alike.
        direction_options: per method name, overrides for the attack direction only (e.g. fewer samples),
            see :func:`smoothgeo.core.attacks.attack`.
        partial_path: CSV to write partial results to after each unit and to resume from (see module docs).
        on_mismatch: what a partial file from another configuration does: ``"raise"`` a ValueError (default)
            or ``"restart"``: warn and start over, overwriting it (the pipeline's notebooks use this, since a
            changed parameter must re-run the stage).
        progress: tqdm bars over units and attack iterations.
    Returns:
        DataFrame with columns :data:`COLUMNS`, rows ordered by attacked method, kind, epsilon (in the given
        orders), image, evaluated method.
    """
    from tqdm.auto import tqdm

    y = check_images(x, y, model=model)
    attacked_methods = _as_list(attacked_methods)
    evaluated_methods = list(attacked_methods if evaluated_methods is None else _as_list(evaluated_methods))
    kinds, epsilons = _as_list(kinds), [float(e) for e in _as_list(epsilons)]
    for name in attacked_methods + evaluated_methods:
        if name not in METHODS:
            raise ValueError(f"unknown attribution method {name!r}; methods must be among {sorted(METHODS)}")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown attack kind {kind!r}; kinds must be among {list(KINDS)}")
    method_options = {m: dict(o) for m, o in (method_options or {}).items()}
    direction_options = {m: dict(o) for m, o in (direction_options or {}).items()}
    unknown = (set(method_options) | set(direction_options)) - set(METHODS)
    if unknown:
        raise ValueError(f"method_options / direction_options have keys {sorted(unknown)}; "
                         f"keys must be method names {sorted(METHODS)}")
    n = x.shape[0]
    x = x.detach()

    config = {"model": fingerprint(*model.state_dict().values()), "data": fingerprint(x, y),
              "evaluated_methods": evaluated_methods, "step_size": step_size, "steps": steps, "k": k,
              "beta": beta, "restarts": restarts, "seed": seed, "method_options": method_options,
              "direction_options": direction_options,
              "target_map": None if target_map is None else fingerprint(torch.as_tensor(target_map)),
              "convention": convention, "map_weight": map_weight, "output_weight": output_weight,
              "on_reject": on_reject, "stall_window": stall_window, "batch_size": batch_size}
    if surrogates is not None or select != "kendall" or random_steps is not None:  # absent: older hashes hold
        config.update(surrogates=None if surrogates is None else list(surrogates), select=select,
                      random_steps=random_steps)
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = None if partial_path is None else Path(partial_path)
    if on_mismatch not in ("raise", "restart"):
        raise ValueError(f"on_mismatch must be 'raise' or 'restart', got {on_mismatch!r}")
    done = _load_partial(path, config_hash, config, on_mismatch) if path is not None else _frame([])
    if path is not None:
        atomic_write_json(Path(str(path) + ".config.json"), config)

    units = [(am, kind, eps) for am in attacked_methods for kind in kinds for eps in epsilons]
    finished = set()
    for key, group in done.groupby(["attacked_method", "kind", "epsilon"]):
        if len(group) == n * len(evaluated_methods):
            finished.add(key)
    done = done.loc[np.array([u in finished for u in _unit_keys(done)], dtype=bool)]
    new_rows: list[dict] = []

    with eval_mode(model):
        with torch.no_grad():
            probs = torch.softmax(model(x), 1)
        pred = probs.argmax(1)
        clean_conf = probs.gather(1, pred.view(-1, 1)).flatten().double().cpu().numpy()
        clean_maps = {}  # evaluated method -> clean map (one draw, shared by all units)

        todo = [u for u in units if u not in finished]
        for am, kind, eps in tqdm(todo, disable=not progress, desc="attack units"):
            unit_steps = steps if kind != "random" or random_steps is None else random_steps
            result = attack(model, x, y, method=am, kind=kind, epsilon=eps, step_size=step_size, steps=unit_steps,
                            k=k, beta=beta, restarts=restarts, seed=derive_seed(seed, "attack", am, kind, eps),
                            method_options=method_options.get(am), direction_options=direction_options.get(am),
                            target_map=target_map,
                            convention=convention, map_weight=map_weight, output_weight=output_weight,
                            on_reject=on_reject, stall_window=stall_window, batch_size=batch_size,
                            progress=progress, surrogates=surrogates, select=select)
            with torch.no_grad():
                adv_probs = torch.softmax(model(result.x_adv), 1)
            adv_conf = adv_probs.gather(1, pred.view(-1, 1)).flatten().double().cpu().numpy()
            label_kept = (adv_probs.argmax(1) == pred).cpu().numpy()
            unit_rows = []
            for em in evaluated_methods:
                opts = method_options.get(em)
                if em not in clean_maps:
                    clean_maps[em] = compute_maps(model, x, pred, em, options=opts, seed=derive_seed(seed, "clean", em),
                                                  convention=convention, batch_size=batch_size)
                adv_map = compute_maps(model, result.x_adv, pred, em, options=opts,
                                       seed=derive_seed(seed, "adv", am, kind, eps, em), convention=convention,
                                       batch_size=batch_size)
                unit_rows += _rows(n=n, kind=kind, epsilon=eps, attacked_method=am, evaluated_method=em,
                                   metrics=compare_maps(clean_maps[em], adv_map, k),
                                   linf=result.linf.double().cpu().numpy(), label_kept=label_kept,
                                   attacked=result.attacked.cpu().numpy(), clean_conf=clean_conf, adv_conf=adv_conf)
            new_rows += unit_rows
            if path is not None:
                partial = pd.concat([done, _frame(new_rows)], ignore_index=True)
                atomic_write_csv(path, partial.assign(config_hash=config_hash))

    frame = pd.concat([done, _frame(new_rows)], ignore_index=True)
    order = {u: i for i, u in enumerate(units)}
    em_order = {m: i for i, m in enumerate(evaluated_methods)}
    frame = frame.loc[np.array([u in order for u in _unit_keys(frame)], dtype=bool)]
    frame = frame.assign(_unit=[order[u] for u in _unit_keys(frame)], _em=frame.evaluated_method.map(em_order))
    frame = frame.sort_values(["_unit", "image", "_em"], kind="stable").drop(columns=["_unit", "_em"])
    return _frame(frame)


def noise_floor(model: nn.Module, x: Tensor, y, *, methods: Sequence[str] = ("SM", "IG", "SG", "UG"),
                method_options: dict[str, dict] | None = None, k: int = 100, seed: int = 0,
                convention: str = "grad_times_input", batch_size: int | None = None) -> pd.DataFrame:
    """Metrics between two independent clean evaluations of each method; columns :data:`COLUMNS`.

    Rows have ``kind="noise_floor"``, ``epsilon=0``, ``attacked_method="none"``, ``linf=0``. Deterministic
    methods (SM, IG) are evaluated once and compared with themselves (top-k 1, Kendall 1, dislocation 0).
    """
    y = check_images(x, y, model=model)
    methods = _as_list(methods)
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown attribution method {name!r}; methods must be among {sorted(METHODS)}")
    if not 1 <= k <= x.shape[-1] * x.shape[-2]:
        raise ValueError(f"k must be in [1, {x.shape[-1] * x.shape[-2]}] (pixels in a map), got {k}")
    method_options = method_options or {}
    n = x.shape[0]
    rows: list[dict] = []
    with eval_mode(model):
        with torch.no_grad():
            probs = torch.softmax(model(x.detach()), 1)
        pred = probs.argmax(1)
        conf = probs.gather(1, pred.view(-1, 1)).flatten().double().cpu().numpy()
        attacked = (pred == y).cpu().numpy()
        for m in methods:
            maps = [compute_maps(model, x, pred, m, options=method_options.get(m),
                                 seed=derive_seed(seed, "floor", m, draw), convention=convention,
                                 batch_size=batch_size)
                    for draw in range(2 if m in RANDOM_METHODS else 1)]
            rows += _rows(n=n, kind="noise_floor", epsilon=0.0, attacked_method="none", evaluated_method=m,
                          metrics=compare_maps(maps[0], maps[-1], k), linf=np.zeros(n),
                          label_kept=np.ones(n, dtype=bool), attacked=attacked, clean_conf=conf, adv_conf=conf)
    return _frame(rows)


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
