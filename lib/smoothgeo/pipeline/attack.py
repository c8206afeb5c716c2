"""Pipeline stage: attack one model with every configured attack setting, once, and store the records.

    python -m smoothgeo.pipeline.attack --params params.yaml --model NAME [--checkpoints data/checkpoints] \\
        [--records data/attacks] [--tables results/attacks] [--timings results/timings] \\
        [--partials data/cache/partial/attacks] [--device auto]
    torchrun --nproc_per_node N -m smoothgeo.pipeline.attack ...     # sharded, see smoothgeo.pipeline.distributed

NAME is a checkpoint name (``<checkpoints>/NAME.pt``, e.g. ``natural-s0``) or an inference-time softplus copy
``BASE+softplus<beta>`` (e.g. ``natural-s0+softplus3``: the base network with Softplus(beta), no retraining).
Every model sees the same evaluation images, ``experiments.eval_images(params["data"], attacks.n_images,
seed=params["seed"])``, so comparisons between models are paired by image index.

Parameters: the ``attacks`` section (and the top-level ``seed``, ``device``, ``data`` and ``methods``), read
and checked by :mod:`smoothgeo.pipeline.attack_config` (its docstring has a complete example and every key).

Conventions:

* Surrogates: a ReLU model is attacked through each softplus beta of ``surrogates`` (per image the worst,
  i.e. lowest-Kendall, result wins; ``member`` / ``beta`` name the winner, beta NaN = the model's own gradient).
  A smooth model (e.g. a ``+softplus`` copy) is attacked through its own gradient only, and the ``random``
  kind uses no surrogate. When :func:`smoothgeo.core.attacks.attack` takes ``surrogates`` the ensemble runs inside
  it; otherwise this stage runs one attack per beta and keeps each image's winner (its diagnostics).
* Evaluation (the rules of :func:`smoothgeo.core.evaluation.evaluate`): the explained class is the model's clean
  prediction; evaluated methods use the top-level ``methods`` options; SG/UG clean maps use one seeded draw per
  method shared by all settings, adversarial maps an independent draw per setting and method.
* Targeted: the target of image i is the clean map of another evaluation image with a different true label
  (:mod:`smoothgeo.core.targets`; the same target image for every model). ``target_distance`` is the mean squared
  per-pixel distance from the adversarial map to the target image's map under the evaluated method,
  ``clean_target_distance`` the same from the clean map (the starting point).

Outputs:

* ``<records>/<model>.pt``: ``{setting_id: {"x_adv": (N, C, H, W) float32, "image": (N,) long, "label": (N,)
  long, "pred": (N,) long, "attacked", "label_kept", "stalled": (N,) bool, "score", "kendall", "linf", "beta":
  (N,) float32, "restart", "member", "rejected_steps", "accepted_steps", "stalled_runs", "zero_directions":
  (N,) long, "target_image": (N,) long (targeted only)}}`` on the CPU, tensors only
  (``torch.load(weights_only=True)``). Diagnostics the installed :func:`~smoothgeo.core.attacks.attack` does not
  report (``accepted_steps``, ``stalled``, ``stalled_runs``) are left out and appear empty in the table.
* ``<tables>/<model>.csv.gz`` (gzip with mtime 0, deterministic): one row per image x setting x evaluated
  method, columns :data:`COLUMNS`.
* ``<timings>/attack-<model>.json``: wall time, peak RSS (``ru_maxrss``), per-setting seconds.

Resuming: each finished setting goes atomically to ``<partials>/<model>/<setting_id>.pt`` with a hash of its
configuration and of the model's weights and the images; a re-run reuses a partial with the same hash and
discards (with a message) one computed under other settings. The partials are removed once the outputs are
written.

Shards (``attacks.shard_size``): the images are cut into shards of that many images, each attacked and
evaluated as an independent unit seeded from the seed and its image range (``derive_seed(seed, "images", start,
stop)``), with partials ``<setting_id>@<start>-<stop>.pt``. The outputs then depend on ``shard_size`` but not on
how many processes share the shards: a run under ``torchrun --nproc_per_node N`` (contiguous runs of shards per
rank, rank 0 writes) gives the same bytes as a single-process run; see :mod:`smoothgeo.pipeline.distributed` for the
launch commands (several nodes, Slurm, DVC). Without ``shard_size`` the stage runs as one unit on one process.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import inspect
import io
import json
import math
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from smoothgeo.core import attacks as attacks_mod
from smoothgeo.pipeline import distributed
from smoothgeo.data import images as experiments
from smoothgeo.core.attacks import derive_seed, eval_mode
from smoothgeo.pipeline.attack_config import DEFAULTS, SETTING_KEYS, check_params, resolve_settings  # noqa: F401 (re-exported)
from smoothgeo.pipeline.attack_config import _on_reject_values  # noqa: F401 (tests read it here)
from smoothgeo.store.checkpoints import CheckpointError, load_checkpoint
from smoothgeo.core.evaluation import METRIC_COLUMNS, compare_maps, compute_maps, fingerprint
from smoothgeo.core.geometry import is_piecewise_linear
from smoothgeo.store.atomic import atomic_path, atomic_write_json, load_params
from smoothgeo.core.models import softplus_copy
from smoothgeo.core.targets import pick_targets, target_distance, target_maps

__all__ = ["main", "run", "check_params", "resolve_settings", "load_model", "parse_model_name", "load_records",
           "load_table",
           "COLUMNS", "DEFAULTS", "SETTING_KEYS"]

COLUMNS = ["model", "setting", "attacked_method", "kind", "epsilon", "image", "label", "evaluated_method",
           *METRIC_COLUMNS, "score", "target_distance", "clean_target_distance", "linf", "attacked", "label_kept",
           "clean_conf", "adv_conf", "restart", "member", "beta", "accepted_steps", "rejected_steps", "stalled",
           "stalled_runs", "zero_directions"]
_DTYPES = {"model": "str", "setting": "str", "attacked_method": "str", "kind": "str", "epsilon": "float64",
           "image": "int64", "label": "int64", "evaluated_method": "str",
           **{c: "float64" for c in METRIC_COLUMNS}, "score": "float64", "target_distance": "float64",
           "clean_target_distance": "float64", "linf": "float64", "attacked": "bool", "label_kept": "bool",
           "clean_conf": "float64", "adv_conf": "float64", "restart": "Int64", "member": "Int64",
           "beta": "float64", "accepted_steps": "Int64", "rejected_steps": "Int64", "stalled": "boolean",
           "stalled_runs": "Int64", "zero_directions": "Int64"}

_DIAGNOSTICS = ("attacked", "label_kept", "score", "kendall", "restart", "rejected_steps", "zero_directions",
                "linf", "accepted_steps", "stalled", "stalled_runs")
_FORMAT = 1


# ---------------------------------------------------------------------------------------------------- models
def parse_model_name(name: str) -> tuple[str, float | None]:
    """``"natural-s0+softplus3"`` -> ``("natural-s0", 3.0)``; a plain checkpoint name -> ``(name, None)``."""
    base, sep, beta = name.rpartition("+softplus")
    if not sep:
        return name, None
    try:
        value = float(beta)
    except ValueError:
        value = float("nan")
    if not base or not value > 0 or not math.isfinite(value):
        raise ValueError(f"model name {name!r} is invalid; allowed: a checkpoint name, or NAME+softplus<beta> "
                         "with beta > 0 (e.g. natural-s0+softplus3)")
    return base, value


def load_model(name: str, *, checkpoints="data/checkpoints", device="cpu") -> nn.Module:
    """The model called ``name``: ``<checkpoints>/name.pt``, or a softplus copy of its base (eval mode)."""
    base, beta = parse_model_name(name)
    model, _ = load_checkpoint(Path(checkpoints) / f"{base}.pt", device=device)
    if beta is not None:
        model = softplus_copy(model, beta)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------------- attack
def _attack(model, x, y, setting: dict, *, seed: int, target_map, batch_size) -> dict[str, Tensor]:
    """Run ``setting``'s attack (its surrogate ensemble included); per-image tensors keyed by name."""
    common = dict(method=setting["method"], kind=setting["kind"], epsilon=setting["epsilon"],
                  step_size=setting["step_size"], steps=setting["steps"], k=setting["k"],
                  restarts=setting["restarts"], method_options=setting["method_options"],
                  direction_options=setting["direction_options"], target_map=target_map,
                  convention=setting["convention"], map_weight=setting["map_weight"],
                  output_weight=setting["output_weight"], on_reject=setting["on_reject"],
                  batch_size=batch_size, progress=False, **setting["extra"])
    surrogates = setting["surrogates"]
    base_seed = derive_seed(seed, "attack", setting["id"])
    n = x.shape[0]
    takes_ensemble = "surrogates" in inspect.signature(attacks_mod.attack).parameters
    if len(surrogates) == 1 or takes_ensemble:
        kw = {"beta": surrogates[0]} if len(surrogates) == 1 else {"surrogates": surrogates}
        result = attacks_mod.attack(model, x, y, seed=base_seed, **common, **kw)
        out = {name: getattr(result, name) for name in ("x_adv", *_DIAGNOSTICS)
               if isinstance(getattr(result, name, None), Tensor)}
        member = getattr(result, "member", None)
        out["member"] = torch.zeros(n, dtype=torch.long, device=x.device) if member is None else member.long()
    else:  # the installed attack() has no ensemble: one attack per beta, each image keeps its lowest Kendall
        results = [attacks_mod.attack(model, x, y, beta=b, seed=derive_seed(base_seed, "member", i), **common)
                   for i, b in enumerate(surrogates)]
        kendall = torch.stack([torch.nan_to_num(r.kendall, nan=math.inf) for r in results])
        member = kendall.argmin(0)
        rows = torch.arange(n, device=x.device)
        out = {}
        for name in ("x_adv", *_DIAGNOSTICS):
            values = [getattr(r, name, None) for r in results]
            if all(isinstance(v, Tensor) for v in values):
                out[name] = torch.stack(values)[member, rows]
        out["member"] = member
    betas = torch.tensor([math.nan if b is None else float(b) for b in surrogates], dtype=torch.float32)
    out["beta"] = betas[out["member"].cpu()]
    return out


def _maps(model, x, pred, method, options, seed, setting, batch_size):
    return compute_maps(model, x, pred, method, options=options, seed=seed, convention=setting["convention"],
                        batch_size=batch_size)


def _run_setting(model, x, y, setting: dict, *, model_name: str, seed: int, batch_size, clean_maps: dict,
                 targets: Tensor | None, offset: int = 0,
                 target_pool: tuple[Tensor, Tensor] | None = None,
                 attack_all: bool = False) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """Attack with one setting and evaluate every evaluated method; returns (record tensors, rows).

    ``x``, ``y`` are images ``offset, offset + 1, ...`` of the evaluation set; ``targets`` index (targeted kind)
    ``target_pool`` = all evaluation images (default: ``(x, y)``). ``attack_all`` (``attacks.images: all``):
    every image is attacked, the model's clean prediction standing in for its label in the attack's label check
    (the record keeps the true labels, which also pick the targets).
    """
    n, sid = x.shape[0], setting["id"]
    pool_x, pool_y = (x, y) if target_pool is None else target_pool
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    pred = probs.argmax(1)
    clean_conf = probs.gather(1, pred.view(-1, 1)).flatten()

    attack_target = None
    if setting["kind"] == "targeted":
        _, attack_target = target_maps(model, pool_x, pool_y, setting["method"], options=setting["method_options"],
                                       seed=derive_seed(seed, "target", sid), convention=setting["convention"],
                                       batch_size=batch_size, index=targets)
    diag = _attack(model, x, pred if attack_all else y, setting, seed=seed, target_map=attack_target,
                   batch_size=batch_size)
    x_adv = diag.pop("x_adv").detach()
    with torch.no_grad():
        adv_probs = torch.softmax(model(x_adv), 1)
    adv_conf = adv_probs.gather(1, pred.view(-1, 1)).flatten()
    label_kept = adv_probs.argmax(1) == pred

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

    def col(name, kind):
        v = record.get(name)
        if v is None:
            return pd.array([pd.NA] * n, dtype=kind)
        return pd.array(v.numpy().tolist(), dtype=kind)

    frames = []
    for em in setting["evaluated_methods"]:
        opts = setting["evaluated_options"][em]
        key = ("clean", em, setting["convention"])  # one clean draw per method, shared by all settings
        if key not in clean_maps:
            clean_maps[key] = _maps(model, x, pred, em, opts, derive_seed(seed, "clean", em), setting, batch_size)
        clean = clean_maps[key]
        adv_map = _maps(model, x_adv, pred, em, opts, derive_seed(seed, "adv", sid, em), setting, batch_size)
        metrics = compare_maps(clean, adv_map, setting["k"])
        dist = clean_dist = np.full(n, np.nan)
        if targets is not None:
            key = ("target", em, setting["convention"])
            if key not in clean_maps:
                clean_maps[key] = target_maps(model, pool_x, pool_y, em, options=opts,
                                              seed=derive_seed(seed, "target", em),
                                              convention=setting["convention"], batch_size=batch_size,
                                              index=targets)[1]
            dist = target_distance(adv_map, clean_maps[key]).double().cpu().numpy()
            clean_dist = target_distance(clean, clean_maps[key]).double().cpu().numpy()
        frames.append(pd.DataFrame({
            "model": model_name, "setting": sid, "attacked_method": setting["method"], "kind": setting["kind"],
            "epsilon": setting["epsilon"], "image": np.arange(offset, offset + n), "label": record["label"].numpy(),
            "evaluated_method": em, **metrics, "score": record["score"].double().numpy(),
            "target_distance": dist, "clean_target_distance": clean_dist,
            "linf": (x_adv - x).flatten(1).abs().amax(1).double().cpu().numpy(),
            "attacked": record["attacked"].numpy(), "label_kept": label_kept.cpu().numpy(),
            "clean_conf": clean_conf.double().cpu().numpy(), "adv_conf": adv_conf.double().cpu().numpy(),
            "restart": col("restart", "Int64"), "member": col("member", "Int64"),
            "beta": record["beta"].double().numpy(), "accepted_steps": col("accepted_steps", "Int64"),
            "rejected_steps": col("rejected_steps", "Int64"), "stalled": col("stalled", "boolean"),
            "stalled_runs": col("stalled_runs", "Int64"),
            "zero_directions": col("zero_directions", "Int64")}))
    order = {m: i for i, m in enumerate(setting["evaluated_methods"])}
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.assign(_em=frame.evaluated_method.map(order)).sort_values(["image", "_em"], kind="stable")
    return record, _frame(frame.drop(columns="_em"))


def _frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[COLUMNS].astype(_DTYPES).reset_index(drop=True)


def _csv_text(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def _read_csv_text(text: str) -> pd.DataFrame:
    return _frame(pd.read_csv(io.StringIO(text), dtype={"model": str, "setting": str}))


# ------------------------------------------------------------------------------------------------- partials
def _setting_hash(setting: dict, fingerprints: dict) -> str:
    blob = json.dumps({"format": _FORMAT, "setting": setting, **fingerprints}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_partial(path: Path, expected: str, log) -> dict | None:
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(obj, dict) and obj.get("hash") == expected
        reason = "it was computed with other settings, model or images"
    except Exception as exc:  # a foreign or damaged file: recompute, never crash the stage on a cache
        ok, reason = False, f"it cannot be read ({type(exc).__name__})"
    if not ok:
        log(f"discarding partial {path}: {reason}")
        path.unlink(missing_ok=True)
        return None
    return obj


def _save_pt(path: Path, obj) -> None:
    # through a file object: torch.save names the archive inside the zip after a path (the random temporary
    # name), but "archive" for a file object, so equal records give equal bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    # gzip with mtime 0 and no file name in the header (pandas would store the random temporary name), so
    # equal tables give equal bytes
    data = gzip.compress(_csv_text(frame).encode(), mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def load_records(path) -> dict[str, dict[str, Tensor]]:
    """Read ``data/attacks/<model>.pt`` (``torch.load(weights_only=True)`` on the CPU)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def _summary_line(setting: dict, record: dict, frame: pd.DataFrame) -> str:
    """One compact progress line: attacked count, the kind's own measure on the attacked method, stalls."""
    att = record["attacked"]
    own = frame[(frame.evaluated_method == setting["method"]) & frame.attacked]
    if own.empty:
        measure = "no attacked image evaluated on the attacked method"
    elif setting["kind"] == "targeted":
        measure = (f"{setting['method']} target distance {own.clean_target_distance.mean():.3g} -> "
                   f"{own.target_distance.mean():.3g}")
    elif setting["kind"] == "mass_center":
        measure = f"{setting['method']} mass-centre shift {own.mass_center.mean():.3f} px"
    else:
        measure = f"{setting['method']} top-k {own.topk.mean():.3f} kendall {own.kendall.mean():.3f}"
    stalled = f", stalled {int(record['stalled'][att].sum())}" if "stalled" in record else ""
    return f"{int(att.sum())}/{len(att)} attacked, {measure}{stalled}"


def load_table(path) -> pd.DataFrame:
    """Read ``results/attacks/<model>.csv.gz`` with the stage's dtypes (nullable ints / bools where unknown)."""
    return _frame(pd.read_csv(Path(path), dtype={"model": str, "setting": str}))


# ------------------------------------------------------------------------------------------------------ run
def run(params: dict, model_name: str, *, checkpoints="data/checkpoints", records="data/attacks",
        tables="results/attacks", timings="results/timings", partials="data/cache/partial/attacks",
        device="cpu", root: Path | None = None, log=None, dist=None) -> dict | None:
    """Attack ``model_name`` with every setting that applies to it; write records, table and timings.

    ``dist``: a :class:`smoothgeo.pipeline.distributed.Context` (initialised) to attack this rank's contiguous run of
    shards (``attacks.shard_size``) and gather them on rank 0, which writes the outputs; None = one process.

    Returns:
        The timings record (also written as JSON); None on ranks other than 0.
    """
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world_size)

    def say(msg):
        msg = msg if world == 1 else f"rank {rank}: {msg}"
        print(msg, file=sys.stderr, flush=True) if log is None else log(msg)

    start = time.perf_counter()
    check_params(params)
    section = params["attacks"]
    seed = int(params.get("seed", 0))
    shard = section.get("shard_size")
    if world > 1 and shard is None:
        raise ValueError(f"attacks.shard_size=None is invalid with {world} ranks; allowed: an integer >= 1 "
                         "(images per shard; the outputs depend on it, not on the number of ranks)")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model = load_model(model_name, checkpoints=checkpoints, device=dev)
    smooth = not is_piecewise_linear(model)
    settings = resolve_settings(params, model_name, smooth=smooth)
    if not settings:
        say(f"warning: no attack setting of params 'attacks.settings' applies to model {model_name!r}")
    x, y = experiments.eval_images(params["data"], section["n_images"], seed=seed, device=dev, root=root)
    y = y.long()
    attack_all = section.get("images", "correct") == "all"
    fingerprints = {"model_name": model_name, "model": fingerprint(*model.state_dict().values()),
                    "data": fingerprint(x, y), "seed": seed, "batch_size": section.get("batch_size")}
    if attack_all:
        fingerprints["images"] = "all"
    batch_size = section.get("batch_size")
    n = x.shape[0]
    # shards: (start, stop) image ranges attacked as independent units; None = all images, the seed as is
    shards = [None] if shard is None else [(a, min(a + shard, n)) for a in range(0, n, shard)]
    mine = [shards[i] for i in distributed.contiguous_shard(len(shards), rank, world)]

    def part_name(sid, sh):
        return sid if sh is None else f"{sid}@{sh[0]}-{sh[1]}"

    part_dir = Path(partials) / model_name
    wanted = {part_name(s["id"], sh) for s in settings for sh in shards}
    if part_dir.exists():
        for stale in sorted(part_dir.glob("*.pt")):
            if stale.stem not in wanted:
                say(f"discarding partial {stale}: setting {stale.stem!r} is no longer configured for {model_name}")
                stale.unlink(missing_ok=True)

    targets = None
    if any(s["kind"] == "targeted" for s in settings):
        targets = pick_targets(y)
    parts: dict[str, list] = {}           # setting id -> [(shard, record, frame, seconds)] of this rank
    computed, resumed = [], []
    caches: dict = {sh: {} for sh in mine}  # clean maps per shard, shared by the settings
    with eval_mode(model):
        for i, setting in enumerate(settings, 1):
            sid = setting["id"]
            parts[sid] = []
            for sh in mine:
                name = part_name(sid, sh)
                path = part_dir / f"{name}.pt"
                prints = fingerprints if sh is None else {**fingerprints, "shard": list(sh)}
                expected = _setting_hash(setting, prints)
                obj = _load_partial(path, expected, say)
                if obj is not None:
                    record, frame, secs = obj["record"], _read_csv_text(obj["rows"]), float(obj["seconds"])
                    resumed.append(name)
                    note = "resumed"
                else:
                    t0 = time.perf_counter()
                    kind_targets = targets if setting["kind"] == "targeted" else None
                    if sh is None:
                        record, frame = _run_setting(model, x, y, setting, model_name=model_name, seed=seed,
                                                     batch_size=batch_size, clean_maps=caches[sh],
                                                     targets=kind_targets, attack_all=attack_all)
                    else:
                        a, b = sh
                        record, frame = _run_setting(
                            model, x[a:b], y[a:b], setting, model_name=model_name,
                            seed=derive_seed(seed, "images", a, b), batch_size=batch_size, clean_maps=caches[sh],
                            targets=None if kind_targets is None else kind_targets[a:b], offset=a,
                            target_pool=(x, y), attack_all=attack_all)
                    secs = time.perf_counter() - t0
                    _save_pt(path, {"hash": expected, "record": record, "rows": _csv_text(frame),
                                    "seconds": secs})
                    computed.append(name)
                    note = f"{secs:.1f} s"
                parts[sid].append((sh, record, frame, secs))
                where = "" if sh is None else f" images {sh[0]}-{sh[1] - 1}"
                say(f"[{i}/{len(settings)}] {model_name} {sid}{where}: {_summary_line(setting, record, frame)} "
                    f"({note})")

    gathered = distributed.gather_to_root(dist, {"parts": parts, "computed": computed, "resumed": resumed})
    rec = None
    if rank == 0:
        records_out: dict[str, dict[str, Tensor]] = {}
        frames, seconds = [], {}
        computed = [c for g in gathered for c in g["computed"]]
        resumed = [r for g in gathered for r in g["resumed"]]
        for setting in settings:
            sid = setting["id"]
            pieces = [p for g in gathered for p in g["parts"][sid]]
            if shard is None:
                (_, record, frame, secs), = pieces
            else:
                pieces.sort(key=lambda p: p[0][0])
                record = {k: torch.cat([p[1][k] for p in pieces]) for k in pieces[0][1]}
                frame = _frame(pd.concat([p[2] for p in pieces], ignore_index=True))
                secs = sum(p[3] for p in pieces)
                say(f"{model_name} {sid}: {_summary_line(setting, record, frame)} ({len(pieces)} shards)")
            # interned keys: pickle shares equal key objects, so resumed or gathered records (keys unpickled as
            # separate strings) would otherwise give other bytes for the same content
            records_out[sys.intern(sid)] = {sys.intern(k): v for k, v in record.items()}
            seconds[sid] = secs
            frames.append(frame)

        table = _frame(pd.concat(frames, ignore_index=True)) if frames else _frame(pd.DataFrame(columns=COLUMNS))
        _save_pt(Path(records) / f"{model_name}.pt", records_out)
        _write_table(Path(tables) / f"{model_name}.csv.gz", table)
    distributed.barrier(dist)                     # outputs written: every rank drops its own partials
    for sid in parts:
        for sh, *_ in parts[sid]:
            (part_dir / f"{part_name(sid, sh)}.pt").unlink(missing_ok=True)
    distributed.barrier(dist)
    if rank == 0:
        if part_dir.exists():
            shutil.rmtree(part_dir, ignore_errors=True)
        wall = time.perf_counter() - start
        rec = {"stage": "attack", "model": model_name, "wall_seconds": round(wall, 3),
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "peak_cuda_mib": (round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda"
                                 else None),
               "device": str(dev), "threads": torch.get_num_threads(), "images": int(x.shape[0]),
               "settings": len(settings), "computed": computed, "resumed": resumed,
               "setting_seconds": {k: round(v, 3) for k, v in seconds.items()}}
        if shard is not None:
            rec.update({"shard_size": shard, "shards": len(shards), "world_size": world})
        atomic_write_json(Path(timings) / f"attack-{model_name}.json", rec)
        say(f"{model_name}: {len(settings)} settings ({len(resumed)} resumed), {len(table)} rows, {wall:.1f} s, "
            f"peak RSS {rec['peak_rss_mib']:.0f} MiB -> {Path(records) / f'{model_name}.pt'}")
    return rec


def main(argv=None) -> dict:
    from smoothgeo.core.device import resolve_device

    parser = argparse.ArgumentParser(prog="python -m smoothgeo.pipeline.attack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default params.yaml)")
    parser.add_argument("--model", required=True, help="checkpoint name, or NAME+softplus<beta>")
    parser.add_argument("--checkpoints", default="data/checkpoints", help="checkpoint folder")
    parser.add_argument("--records", default="data/attacks", help="folder of <model>.pt attack records")
    parser.add_argument("--tables", default="results/attacks", help="folder of <model>.csv.gz tables")
    parser.add_argument("--timings", default="results/timings", help="folder of attack-<model>.json timings")
    parser.add_argument("--partials", default="data/cache/partial/attacks", help="folder of resumable partials")
    parser.add_argument("--device", default=None,
                        help="auto (cuda if available), cpu, cuda, ...; default: params 'device' or auto")
    parser.add_argument("--distributed", action="store_true",
                        help="shard over the ranks of torchrun (detected when torchrun starts the stage); "
                             "needs attacks.shard_size, see smoothgeo.pipeline.distributed")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    requested = args.device or params.get("device") or "auto"
    if not (args.distributed or distributed.launched()):
        return run(params, args.model, checkpoints=args.checkpoints, records=args.records, tables=args.tables,
                   timings=args.timings, partials=args.partials, device=resolve_device(requested))
    ctx = distributed.from_env()
    device = distributed.device_for(ctx, requested)
    ctx = distributed.init(ctx, device)
    try:
        return run(params, args.model, checkpoints=args.checkpoints, records=args.records, tables=args.tables,
                   timings=args.timings, partials=args.partials, device=device, dist=ctx)
    finally:
        distributed.shutdown(ctx)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
