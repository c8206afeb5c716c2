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
  kind uses no surrogate. The ensemble runs inside :func:`smoothgeo.core.attacks.attack`.
* Evaluation: each setting (and shard) goes through the one evaluation engine,
  :func:`smoothgeo.core.evaluation.run_setting` (its docstring has the rules): the explained class is the model's
  clean prediction; evaluated methods use the top-level ``methods`` options; SG/UG clean maps use one seeded draw
  per method shared by all settings, adversarial maps an independent draw per setting and method.
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
* ``<tables>/<model>.csv.gz`` (:func:`smoothgeo.store.tables.write_table`: gzip with mtime 0, deterministic): one
  row per image x setting x evaluated method, columns :data:`smoothgeo.core.evaluation.COLUMNS`.
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
import hashlib
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from smoothgeo.core.attacks import derive_seed, eval_mode
from smoothgeo.core.evaluation import COLUMNS, as_table, fingerprint, run_setting
from smoothgeo.core.geometry import is_piecewise_linear
from smoothgeo.core.models import softplus_copy
from smoothgeo.core.targets import pick_targets
from smoothgeo.data import images as experiments
from smoothgeo.pipeline import distributed
from smoothgeo.pipeline.attack_config import DEFAULTS, SETTING_KEYS, check_params, resolve_settings
from smoothgeo.store.atomic import atomic_path, atomic_write_json, load_params
from smoothgeo.store.checkpoints import CheckpointError, load_checkpoint
from smoothgeo.store.names import parse_model_name
from smoothgeo.store.tables import read_table, read_table_text, table_text, write_table

# re-exported for callers of the stage module: COLUMNS (core.evaluation), parse_model_name (store.names),
# load_table (= store.tables.read_table), check_params / resolve_settings / DEFAULTS / SETTING_KEYS (attack_config)
__all__ = ["main", "run", "check_params", "resolve_settings", "load_model", "parse_model_name", "load_records",
           "load_table", "COLUMNS", "DEFAULTS", "SETTING_KEYS"]

#: read ``results/attacks/<model>.csv.gz`` (:func:`smoothgeo.store.tables.read_table`)
load_table = read_table
_FORMAT = 1  # of the partials' hash


# ---------------------------------------------------------------------------------------------------- models
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


# ------------------------------------------------------------------------------------------------------ run
def _part_name(sid: str, shard: tuple[int, int] | None) -> str:
    return sid if shard is None else f"{sid}@{shard[0]}-{shard[1]}"


def _drop_stale_partials(part_dir: Path, wanted: set[str], model_name: str, say) -> None:
    if part_dir.exists():
        for stale in sorted(part_dir.glob("*.pt")):
            if stale.stem not in wanted:
                say(f"discarding partial {stale}: setting {stale.stem!r} is no longer configured for {model_name}")
                stale.unlink(missing_ok=True)


def _run_part(model, x, y, setting: dict, shard, *, model_name, seed, batch_size, clean_maps, targets, attack_all,
              replication=None):
    """One setting on one shard (None = all images, the seed as is) through the engine: (record, rows).

    A setting with ``n_images: m`` runs on the first m evaluation images; one with ``image_set: replication`` on
    the replication images (disjoint from the evaluation images; ids ``n_images ..``), never sharded.
    """
    targets = targets if setting["kind"] == "targeted" else None
    m = setting.get("n_images")
    if setting.get("image_set", "main") == "replication":
        xr, yr = replication
        m = xr.shape[0] if m is None else m
        return run_setting(model, xr[:m], yr[:m], setting, model_name=model_name, seed=derive_seed(seed, "replication"),
                           batch_size=batch_size, clean_maps={}, offset=x.shape[0], attack_all=attack_all)
    if m is not None and m < x.shape[0]:
        return run_setting(model, x[:m], y[:m], setting, model_name=model_name, seed=seed, batch_size=batch_size,
                           clean_maps={}, attack_all=attack_all)
    if shard is None:
        return run_setting(model, x, y, setting, model_name=model_name, seed=seed, batch_size=batch_size,
                           clean_maps=clean_maps, targets=targets, attack_all=attack_all)
    a, b = shard
    return run_setting(model, x[a:b], y[a:b], setting, model_name=model_name, seed=derive_seed(seed, "images", a, b),
                       batch_size=batch_size, clean_maps=clean_maps,
                       targets=None if targets is None else targets[a:b], offset=a, target_pool=(x, y),
                       attack_all=attack_all)


def _attack_parts(model, x, y, settings: list[dict], mine: list, *, model_name: str, seed: int, batch_size,
                  attack_all: bool, part_dir: Path, fingerprints: dict, say, replication=None
                  ) -> tuple[dict, list, list]:
    """This rank's shards of every setting, each resumed from its partial or computed (and saved as one).

    Returns ``({setting id: [(shard, record, rows, seconds)]}, computed, resumed)`` (part names).
    """
    targets = pick_targets(y) if any(s["kind"] == "targeted" for s in settings) else None
    parts: dict[str, list] = {}
    computed, resumed = [], []
    caches: dict = {sh: {} for sh in mine}  # clean maps per shard, shared by the settings
    with eval_mode(model):
        for i, setting in enumerate(settings, 1):
            sid = setting["id"]
            parts[sid] = []
            for sh in mine:
                name = _part_name(sid, sh)
                path = part_dir / f"{name}.pt"
                expected = _setting_hash(setting, fingerprints if sh is None else {**fingerprints, "shard": list(sh)})
                obj = _load_partial(path, expected, say)
                if obj is not None:
                    record, frame, secs = obj["record"], read_table_text(obj["rows"]), float(obj["seconds"])
                    resumed.append(name)
                    note = "resumed"
                else:
                    t0 = time.perf_counter()
                    record, frame = _run_part(model, x, y, setting, sh, model_name=model_name, seed=seed,
                                              batch_size=batch_size, clean_maps=caches[sh], targets=targets,
                                              attack_all=attack_all, replication=replication)
                    secs = time.perf_counter() - t0
                    _save_pt(path, {"hash": expected, "record": record, "rows": table_text(frame), "seconds": secs})
                    computed.append(name)
                    note = f"{secs:.1f} s"
                parts[sid].append((sh, record, frame, secs))
                where = "" if sh is None else f" images {sh[0]}-{sh[1] - 1}"
                say(f"[{i}/{len(settings)}] {model_name} {sid}{where}: {_summary_line(setting, record, frame)} "
                    f"({note})")
    return parts, computed, resumed


def _assemble(settings: list[dict], gathered: list[dict], *, sharded: bool, model_name: str, say,
              keep_images=None):
    """Rank 0: every setting's record and rows from the gathered parts (shards in image order).

    ``keep_images``: names of the settings whose adversarial images (``x_adv``) the record keeps (None: all);
    the others keep their per-image diagnostics only, so the shipped records stay small.
    Returns ``(records, table, seconds per setting)``.
    """
    records_out: dict[str, dict[str, Tensor]] = {}
    frames, seconds = [], {}
    for setting in settings:
        sid = setting["id"]
        pieces = [p for g in gathered for p in g["parts"][sid]]
        if not sharded:
            (_, record, frame, secs), = pieces
        else:
            pieces.sort(key=lambda p: p[0][0])
            record = {k: torch.cat([p[1][k] for p in pieces]) for k in pieces[0][1]}
            frame = as_table(pd.concat([p[2] for p in pieces], ignore_index=True))
            secs = sum(p[3] for p in pieces)
            say(f"{model_name} {sid}: {_summary_line(setting, record, frame)} ({len(pieces)} shards)")
        # interned keys: pickle shares equal key objects, so resumed or gathered records (keys unpickled as
        # separate strings) would otherwise give other bytes for the same content
        drop = keep_images is not None and setting["name"] not in keep_images
        records_out[sys.intern(sid)] = {sys.intern(k): v for k, v in record.items() if not (drop and k == "x_adv")}
        seconds[sid] = secs
        frames.append(frame)
    table = as_table(pd.concat(frames, ignore_index=True)) if frames else as_table(pd.DataFrame(columns=COLUMNS))
    return records_out, table, seconds


def _inputs(params: dict, model_name: str, *, checkpoints, device: torch.device, root):
    """The model, the settings that apply to it, the evaluation images and the fingerprints of the partials."""
    section, seed = params["attacks"], int(params.get("seed", 0))
    model = load_model(model_name, checkpoints=checkpoints, device=device)
    settings = resolve_settings(params, model_name, smooth=not is_piecewise_linear(model))
    x, y = experiments.eval_images(params["data"], section["n_images"], seed=seed, device=device, root=root)
    y = y.long()
    replication = None
    if any(s.get("image_set", "main") == "replication" for s in settings):
        xr, yr = experiments.eval_images(params["data"], section["n_images"], seed=seed, device=device, root=root,
                                         offset=section["n_images"])
        replication = (xr, yr.long())
    fingerprints = {"model_name": model_name, "model": fingerprint(*model.state_dict().values()),
                    "data": fingerprint(x, y), "seed": seed, "batch_size": section.get("batch_size")}
    if section.get("images", "correct") == "all":
        fingerprints["images"] = "all"
    if replication is not None:
        fingerprints["replication"] = fingerprint(*replication)
    return model, settings, x, y, fingerprints, replication


def _drop_own_partials(dist, parts: dict, part_dir: Path) -> None:
    """After rank 0 wrote the outputs: each rank removes the partials it computed or resumed."""
    distributed.barrier(dist)
    for sid in parts:
        for sh, *_ in parts[sid]:
            (part_dir / f"{_part_name(sid, sh)}.pt").unlink(missing_ok=True)
    distributed.barrier(dist)


def _timing_record(model_name: str, gathered: list[dict], settings: list[dict], seconds: dict, *, wall: float,
                   device: torch.device, images: int, shards: dict) -> dict:
    """``<timings>/attack-<model>.json``: wall time, peak memory, the computed / resumed parts, per-setting seconds."""
    return {"stage": "attack", "model": model_name, "wall_seconds": round(wall, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_cuda_mib": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda"
                              else None),
            "device": str(device), "threads": torch.get_num_threads(), "images": images, "settings": len(settings),
            "computed": [c for g in gathered for c in g["computed"]],
            "resumed": [r for g in gathered for r in g["resumed"]],
            "setting_seconds": {k: round(v, 3) for k, v in seconds.items()}, **shards}


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
    section, seed, shard = params["attacks"], int(params.get("seed", 0)), params["attacks"].get("shard_size")
    if world > 1 and shard is None:
        raise ValueError(f"attacks.shard_size=None is invalid with {world} ranks; allowed: an integer >= 1 "
                         "(images per shard; the outputs depend on it, not on the number of ranks)")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model, settings, x, y, fingerprints, replication = _inputs(params, model_name, checkpoints=checkpoints,
                                                                device=dev, root=root)
    subset = [s["id"] for s in settings if s.get("n_images") is not None or s.get("image_set", "main") != "main"]
    if shard is not None and subset:
        raise ValueError(f"attacks.shard_size={shard} is invalid with settings on an image subset or the replication "
                         f"set ({', '.join(subset)}); allowed: shard_size null, or drop n_images/image_set there")
    if not settings:
        say(f"warning: no attack setting of params 'attacks.settings' applies to model {model_name!r}")
    attack_all = section.get("images", "correct") == "all"
    # shards: (start, stop) image ranges attacked as independent units; None = all images, the seed as is
    n = x.shape[0]
    shards = [None] if shard is None else [(a, min(a + shard, n)) for a in range(0, n, shard)]
    mine = [shards[i] for i in distributed.contiguous_shard(len(shards), rank, world)]
    part_dir = Path(partials) / model_name
    _drop_stale_partials(part_dir, {_part_name(s["id"], sh) for s in settings for sh in shards}, model_name, say)
    parts, computed, resumed = _attack_parts(model, x, y, settings, mine, model_name=model_name, seed=seed,
                                             batch_size=section.get("batch_size"), attack_all=attack_all,
                                             part_dir=part_dir, fingerprints=fingerprints, say=say,
                                             replication=replication)

    gathered = distributed.gather_to_root(dist, {"parts": parts, "computed": computed, "resumed": resumed})
    if rank == 0:
        records_out, table, seconds = _assemble(settings, gathered, sharded=shard is not None,
                                                keep_images=section.get("keep_images"),
                                                model_name=model_name, say=say)
        _save_pt(Path(records) / f"{model_name}.pt", records_out)
        write_table(Path(tables) / f"{model_name}.csv.gz", table)
    _drop_own_partials(dist, parts, part_dir)    # outputs written: every rank drops its own partials
    if rank != 0:
        return None
    shutil.rmtree(part_dir, ignore_errors=True)
    wall = time.perf_counter() - start
    rec = _timing_record(model_name, gathered, settings, seconds, wall=wall, device=dev, images=n,
                         shards={"shard_size": shard, "shards": len(shards), "world_size": world}
                         if shard is not None else {})
    atomic_write_json(Path(timings) / f"attack-{model_name}.json", rec)
    say(f"{model_name}: {len(settings)} settings ({len(rec['resumed'])} resumed), {len(table)} rows, {wall:.1f} s, "
        f"peak RSS {rec['peak_rss_mib']:.0f} MiB -> {Path(records) / f'{model_name}.pt'}")
    return rec


def main(argv=None) -> dict:
    from smoothgeo.core.device import resolve_device
    from smoothgeo.store.names import cli_name

    parser = argparse.ArgumentParser(prog="python -m smoothgeo.pipeline.attack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default params.yaml)")
    parser.add_argument("--model", required=True, type=cli_name("--model"),
                        help="checkpoint name, or NAME+softplus<beta>")
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
    from smoothgeo.core.device import set_threads
    set_threads(params.get("threads"))
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
