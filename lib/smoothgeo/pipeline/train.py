"""Command line: train one named run of params.yaml and write its checkpoint and JSON record.

    python -m smoothgeo.pipeline.train --params params.yaml --name NAME --checkpoints data/checkpoints \\
        --record results/training/NAME.json [--device auto] [--quiet]

``--device`` defaults to the params file's top-level ``device`` (else ``auto``: cuda when available).

NAME is looked up in ``train.scratch`` (trained from a seeded random init) or ``train.finetune`` (starts from
``<checkpoints>/<init>.pt``) and merged over ``train.defaults``. The keys in :data:`GENERIC_KEYS` configure the
run; every other key is an option of the recipe (see ``smoothgeo.training.recipes.OPTIONS``). The seed is the top-level
``seed`` unless the entry sets its own. Data: ``data.dataset`` from ``data.root``, subsets of
``data.train_limit`` / ``data.test_limit`` images drawn with the seed.

After every epoch the training state goes atomically to ``<checkpoints>/NAME.partial.pt``; a new run with the
same configuration (the epoch count included: a partial of a 3-epoch run is never finished as a 1-epoch one)
continues from it, and a partial from another configuration is discarded with a message naming the settings
that differ. At the end ``<checkpoints>/NAME.pt`` and the record (keys :data:`RECORD_KEYS`) are written
atomically and the partial is removed. Temporary files of killed writers (``*.smoothgeo-tmp``) in the
checkpoint folder are removed at the start.

Allowed ranges (anything else is refused with the range): ``lr`` in (0, 1] (Adam is typically used at 1e-4 ..
1e-2, SGD up to about 0.5; 1 is already far beyond what any recipe here trains with), ``epochs`` 0 .. 10000,
``batch_size`` 1 .. 65536; recipe options as in ``smoothgeo.training.recipes.OPTIONS``.

Determinism: ``torch.use_deterministic_algorithms(True, warn_only=True)`` is on during training (with
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` on CUDA), every random draw is seeded, and checkpoints are written with
deterministic bytes, so the same machine, seed and thread count give byte-identical checkpoints. Records hold
wall-clock timings, which differ between runs. Across CPUs with different vector units (AVX2 vs AVX-512) the
kernels oneDNN/ATen dispatch to differ and so do the last bits of reductions.

Errors in the configuration (unknown run, a value out of range, broken YAML, a device that does not exist) end
the CLI with exit code 2 and one line on stderr, no traceback.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, Subset, TensorDataset

from smoothgeo import __version__
from smoothgeo.store import checkpoints as ckpt
from smoothgeo.store.atomic import atomic_write_json, load_params, remove_stale_temps
from smoothgeo.store.names import check_name, check_param_names, cli_name
from smoothgeo.core.device import PRECISIONS, autocast_dtype, cpu_features, resolve_device, set_threads
from smoothgeo.core.models import ARCHITECTURES, build_model
from smoothgeo.training.recipes import OPTIMIZERS, RECIPES, SCHEDULES, check_options, evaluate_accuracy, fit

__all__ = ["main", "resolve_config", "run", "resolve_device", "GENERIC_KEYS", "RECORD_KEYS"]

GENERIC_KEYS = ("recipe", "init", "arch", "epochs", "lr", "batch_size", "optimizer", "max_batches", "seed",
                "pretrained", "schedule", "precision", "stop_at", "val_size", "val_points")
RECORD_KEYS = ("name", "recipe", "init", "arch", "dataset", "seed", "epochs", "hyperparameters", "options",
               "test_accuracy", "seconds_per_epoch", "mean_seconds_per_epoch", "history", "train_size",
               "test_size", "batches_per_epoch", "resumed_from_epoch", "device", "version", "torch_version",
               "checkpoint", "init_sha256", "budget", "precision", "val_curve", "val_accuracy", "plateau_gain")
#: the validation images are the same for every run: a fixed split of the training set (never the test set)
VAL_SEED = 20201206
_EVAL_BATCH = 500


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(cond: bool, name: str, value, allowed: str) -> None:
    if not cond:
        raise ValueError(f"training parameter {name}={value!r} is invalid; allowed: {allowed}")


def resolve_config(params: dict, name: str) -> dict:
    """The validated configuration of run ``name`` (entry merged over ``train.defaults``).

    Raises:
        ValueError: unknown name, unknown recipe/arch/optimizer, or a value out of range (the message names the
            parameter and the allowed range).
    """
    check_name(name, "--name")
    check_param_names(params)  # run names become file names and DVC stage names
    train = params.get("train") or {}
    scratch, finetune = train.get("scratch") or {}, train.get("finetune") or {}
    if name in scratch and name in finetune:
        raise ValueError(f"training run {name!r} is defined in both train.scratch and train.finetune; keep one")
    if name not in scratch and name not in finetune:
        known = sorted(scratch) + sorted(finetune)
        raise ValueError(f"unknown training run {name!r}: not in train.scratch or train.finetune of the params "
                         f"file; known runs: {known}")
    kind = "scratch" if name in scratch else "finetune"
    entry = {**(train.get("defaults") or {}), **((scratch if kind == "scratch" else finetune)[name] or {})}
    entry.setdefault("seed", params.get("seed", 0))
    for key, default in (("arch", "fashion_cnn"), ("optimizer", "adam"), ("max_batches", None), ("init", None),
                         ("pretrained", False), ("schedule", "constant"), ("precision", "float32"),
                         ("stop_at", 1.0), ("val_size", 0), ("val_points", 10)):
        entry.setdefault(key, default)
    for key in ("recipe", "epochs", "lr", "batch_size"):
        if key not in entry:
            raise ValueError(f"training run {name!r} has no {key!r} (set it in the entry or in train.defaults)")
    recipe = entry["recipe"]
    _check(recipe in RECIPES, "recipe", recipe, f"one of {sorted(RECIPES)}")
    _check(entry["arch"] in ARCHITECTURES, "arch", entry["arch"], f"one of {sorted(ARCHITECTURES)}")
    _check(_is_int(entry["epochs"]) and 0 <= entry["epochs"] <= 10000, "epochs", entry["epochs"],
           "an integer >= 0 and <= 10000 (0: no training, e.g. a pretrained model)")
    _check(entry["pretrained"] in (False, True) and (not entry["pretrained"] or entry["arch"] == "resnet50"),
           "pretrained", entry["pretrained"], "false, or true with arch resnet50 (torchvision's ImageNet weights)")
    _check(isinstance(entry["lr"], (int, float)) and not isinstance(entry["lr"], bool) and 0 < entry["lr"] <= 1,
           "lr", entry["lr"], "a number with 0 < lr <= 1 (Adam typically 1e-4 .. 1e-2, SGD up to about 0.5)")
    _check(_is_int(entry["batch_size"]) and 1 <= entry["batch_size"] <= 65536, "batch_size", entry["batch_size"],
           "an integer >= 1 and <= 65536")
    _check(entry["optimizer"] in OPTIMIZERS, "optimizer", entry["optimizer"], f"one of {list(OPTIMIZERS)}")
    _check(entry["max_batches"] is None or (_is_int(entry["max_batches"]) and entry["max_batches"] >= 1),
           "max_batches", entry["max_batches"], "null or an integer >= 1")
    _check(_is_int(entry["seed"]) and entry["seed"] >= 0, "seed", entry["seed"], "an integer >= 0")
    _check(entry["schedule"] in SCHEDULES, "schedule", entry["schedule"], f"one of {list(SCHEDULES)}")
    _check(entry["precision"] in PRECISIONS, "precision", entry["precision"], f"one of {list(PRECISIONS)}")
    _check(isinstance(entry["stop_at"], (int, float)) and not isinstance(entry["stop_at"], bool)
           and 0 < entry["stop_at"] <= 1, "stop_at", entry["stop_at"],
           "a fraction of the budget with 0 < stop_at <= 1 (1: the whole budget)")
    _check(_is_int(entry["val_size"]) and entry["val_size"] >= 0, "val_size", entry["val_size"],
           "an integer >= 0 (training images held out for validation; 0: none)")
    _check(_is_int(entry["val_points"]) and entry["val_points"] >= 1, "val_points", entry["val_points"],
           "an integer >= 1 (validation measurements along training)")
    if kind == "finetune":
        _check(isinstance(entry["init"], str) and entry["init"] not in ("", name), "init", entry["init"],
               "the name of another training run whose checkpoint it starts from")
    else:
        _check(entry["init"] is None, "init", entry["init"], "null for train.scratch runs (move it to finetune)")
    options = check_options(recipe, {k: v for k, v in entry.items() if k not in GENERIC_KEYS})
    data = dict(params.get("data") or {})
    data.setdefault("dataset", "fashion_mnist")
    data.setdefault("root", "data/raw")
    for key in ("train_limit", "test_limit"):
        data.setdefault(key, None)
        _check(data[key] is None or (_is_int(data[key]) and data[key] >= 1), f"data.{key}", data[key],
               "null or an integer >= 1")
    return {"name": name, "kind": kind, **{k: entry[k] for k in GENERIC_KEYS if k != "recipe"},
            "recipe": recipe, "options": options, "data": data}


def _subset_indices(n: int, limit, seed: int) -> torch.Tensor:
    """The same seeded subset rule as ``smoothgeo.data.datasets.load_tensors``."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[: int(limit)].sort().values


def _loader(dataset, indices, batch_size: int, shuffle: bool) -> DataLoader:
    """Batches of ``dataset[indices]``; in-memory sets are indexed a batch at a time (fast, same order)."""
    if hasattr(dataset, "tensors") and callable(dataset.tensors):
        ds = TensorDataset(*dataset.tensors(indices))
        sampler = RandomSampler(ds) if shuffle else SequentialSampler(ds)
        return DataLoader(ds, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)
    ds = Subset(dataset, indices.tolist())
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


def _num_classes(name: str, dataset) -> int:
    from smoothgeo.data import datasets as data

    try:
        return int(data.dataset_info(name)["num_classes"])
    except (ValueError, AttributeError):
        labels = getattr(dataset, "labels", None)
        labels = labels if labels is not None else torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
        return int(torch.as_tensor(labels).max()) + 1


def _model_kwargs(arch: str, shape) -> dict:
    return ARCHITECTURES[arch].shape_kwargs(tuple(shape))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(config: dict, init_sha: str | None) -> dict:
    """What a partial must share with the current run to be continued: every setting, the epoch count included
    (a run killed in epoch 2 of 3 and resumed with ``epochs: 1`` would otherwise write a 2-epoch model labelled
    1 epoch) and the init checkpoint's hash."""
    data = {k: v for k, v in config["data"].items() if k != "root"}
    keep = {k: v for k, v in config.items() if k != "data"}
    return json.loads(json.dumps({**keep, "data": data, "init_sha256": init_sha}, sort_keys=True))


def _differences(old, new) -> list[str]:
    """Names of the top-level settings (data.* expanded) that differ between two fingerprints."""
    if not isinstance(old, dict):
        return ["(unreadable configuration)"]
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "data" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"data.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _budget_fields(config: dict, history: list[dict], planned: int, precision: torch.dtype) -> dict:
    """The record's budget (what was trained, in batches, of what size, over how many epochs), the precision,
    the validation curve and its plateau: the accuracy gained over the last fifth of the batches run."""
    curve = [point for h in history for point in h.get("val_curve", [])]
    done = sum(int(h["batches"]) for h in history)
    gain = None
    if len(curve) >= 2:
        cut = 0.8 * curve[-1][0]
        before = [acc for step, acc in curve if step <= cut]
        gain = curve[-1][1] - (before[-1] if before else curve[0][1])
    return {"budget": {"batches": done, "batches_planned": planned, "batch_size": config["batch_size"],
                       "epochs": config["epochs"], "stop_at": config.get("stop_at", 1.0),
                       "images": done * config["batch_size"], "schedule": config.get("schedule", "constant"),
                       "lr": config["lr"]},
            "precision": str(precision).replace("torch.", ""), "val_curve": curve,
            "val_accuracy": curve[-1][1] if curve else None, "plateau_gain": gain}


def _deterministic(dev: torch.device) -> None:
    """Deterministic kernels where torch has them (warn, not fail, where it does not)."""
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def run(config: dict, *, checkpoints="data/checkpoints", record=None, device="auto", progress: bool = True) -> dict:
    """Train the run described by ``config`` (from :func:`resolve_config`); write checkpoint and record.

    Returns:
        The record (also written to ``record`` as JSON when given).
    """
    from smoothgeo.data import datasets as data_mod

    name, seed = config["name"], config["seed"]
    dev = resolve_device(device)
    _deterministic(dev)
    checkpoints = Path(checkpoints)
    final_path, partial_path = checkpoints / f"{name}.pt", checkpoints / f"{name}.partial.pt"
    for stale in remove_stale_temps(checkpoints):
        print(f"removed {stale}, a temporary file left by an interrupted write", file=sys.stderr)
    dcfg = config["data"]
    test_ds = data_mod.load_dataset(dcfg["dataset"], "test", root=dcfg["root"])
    # epochs 0 (a pretrained model, e.g. ImageNet's ResNet-50) needs no training split
    train_ds = data_mod.load_dataset(dcfg["dataset"], "train", root=dcfg["root"]) if config["epochs"] else test_ds
    train_idx = _subset_indices(len(train_ds), dcfg["train_limit"], seed) if config["epochs"] else torch.arange(0)
    test_idx = _subset_indices(len(test_ds), dcfg["test_limit"], seed)
    num_classes = _num_classes(dcfg["dataset"], test_ds)
    model_kwargs = _model_kwargs(config["arch"], tuple(test_ds[0][0].shape))

    init_sha = None
    if config["kind"] == "finetune":
        init_path = checkpoints / f"{config['init']}.pt"
        model, init_meta = ckpt.load_checkpoint(init_path)
        if init_meta["arch"] != config["arch"] or init_meta["num_classes"] != num_classes:
            raise ValueError(f"{init_path} holds a {init_meta['arch']} with {init_meta['num_classes']} classes but "
                             f"run {name!r} needs {config['arch']} with {num_classes}; fix 'arch'/'init' in params")
        init_sha = _sha256(init_path)
    else:
        torch.manual_seed(seed)
        build_kwargs = {**model_kwargs, "pretrained": True} if config.get("pretrained") else model_kwargs
        model = build_model(config["arch"], num_classes=num_classes, **build_kwargs)
    model.to(dev)

    fingerprint = _fingerprint(config, init_sha)
    start_epoch, history, optimizer_state = 0, [], None
    try:
        partial = ckpt.load_partial(partial_path)
    except ckpt.CheckpointError as exc:
        print(f"warning: ignoring unreadable partial state ({exc}); training {name} from the start",
              file=sys.stderr)
        partial = None
    if partial is not None:
        if partial.get("config") == fingerprint and int(partial["epoch"]) <= config["epochs"]:
            model.load_state_dict(partial["state_dict"])
            start_epoch, history = int(partial["epoch"]), list(partial["history"])
            optimizer_state = partial["optimizer"]
            ckpt.set_rng_state(partial["rng"])
            print(f"resuming {name} from {partial_path} after epoch {start_epoch}", file=sys.stderr)
        else:
            diff = "; ".join(_differences(partial.get("config"), fingerprint)) or "epoch count beyond this run"
            print(f"warning: {partial_path} was written with a different configuration ({diff}); discarding it and "
                  f"training {name} from the start", file=sys.stderr)
            partial_path.unlink(missing_ok=True)
    resumed_from = start_epoch

    val_idx = torch.arange(0)
    if config.get("val_size") and config["epochs"]:
        order = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(VAL_SEED))
        if config["val_size"] >= len(train_idx):
            raise ValueError(f"val_size {config['val_size']} leaves no training images (training set "
                             f"{len(train_idx)}); lower val_size or data.train_limit")
        val_idx = train_idx[order[: config["val_size"]].sort().values]
        train_idx = train_idx[order[config["val_size"]:].sort().values]
    train_loader = _loader(train_ds, train_idx, config["batch_size"], shuffle=True) if config["epochs"] else []
    test_loader = _loader(test_ds, test_idx, _EVAL_BATCH, shuffle=False)
    val_loader = _loader(train_ds, val_idx, _EVAL_BATCH, shuffle=False) if len(val_idx) else None
    per_epoch = min(len(train_loader), config["max_batches"] or len(train_loader)) if config["epochs"] else 0
    planned = per_epoch * config["epochs"]
    stop_after = max(1, round(config.get("stop_at", 1.0) * planned)) if planned else None
    val_steps = sorted({max(1, round(stop_after * i / config.get("val_points", 10)))
                        for i in range(1, config.get("val_points", 10) + 1)}) if val_loader and stop_after else []
    epoch_curve: list[list] = []

    def on_step(step, model_):
        if step in val_steps:
            epoch_curve.append([step, evaluate_accuracy(model_, val_loader)])
    precision = autocast_dtype(config.get("precision", "float32"), dev)

    def save_state(epoch_done, model_, optimizer, log):
        log["val_curve"] = list(epoch_curve)
        epoch_curve.clear()
        history.append(log)
        logs = ", ".join(f"{k} {v:.4g}" for k, v in log.items() if k not in ("epoch", "seconds", "batches", "val_curve"))
        print(f"{name} epoch {epoch_done}/{config['epochs']}: {log['batches']} batches in {log['seconds']:.1f} s; "
              f"{logs}", file=sys.stderr)
        ckpt.save_partial(partial_path, model=model_, optimizer=optimizer, epoch=epoch_done,
                          config=fingerprint, history=history)

    print(f"training {name}: recipe {config['recipe']} {config['options']}, {config['arch']} on "
          f"{dcfg['dataset']} ({len(train_idx)} images, {len(val_idx)} held out for validation), "
          f"{config['epochs']} epochs (stop after {stop_after} of {planned} batches), device {dev}, "
          f"precision {str(precision).replace('torch.', '')} (CPU bf16 features: "
          f"{', '.join(sorted(cpu_features())) or 'none'})", file=sys.stderr)
    fit(model, train_loader, recipe=config["recipe"], options=config["options"], epochs=config["epochs"],
        lr=config["lr"], optimizer=config["optimizer"], start_epoch=start_epoch, optimizer_state=optimizer_state,
        max_batches=config["max_batches"], seed=seed, on_epoch_end=save_state, progress=progress,
        schedule=config.get("schedule", "constant"), stop_after=stop_after, autocast=precision, on_step=on_step)
    accuracy = evaluate_accuracy(model, test_loader)
    seconds = [float(h["seconds"]) for h in history]
    hyper = {k: config[k] for k in GENERIC_KEYS if k in config}
    hyper.update(config["options"])
    hyper.update(train_limit=dcfg["train_limit"], test_limit=dcfg["test_limit"])
    rec = {
        "name": name, "recipe": config["recipe"], "init": config["init"], "arch": config["arch"],
        "dataset": dcfg["dataset"], "seed": seed, "epochs": config["epochs"], "hyperparameters": hyper,
        "options": config["options"], "test_accuracy": accuracy, "seconds_per_epoch": seconds,
        "mean_seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None, "history": history,
        "train_size": len(train_idx), "test_size": len(test_idx),
        "batches_per_epoch": history[-1]["batches"] if history else None, "resumed_from_epoch": resumed_from,
        "device": str(dev), "version": __version__, "torch_version": torch.__version__,
        "checkpoint": str(final_path), "init_sha256": init_sha,
        **_budget_fields(config, history, planned, precision),
    }
    meta = {k: rec[k] for k in ("name", "recipe", "init", "dataset", "seed", "epochs", "hyperparameters",
                                "test_accuracy", "version")}
    ckpt.save_checkpoint(final_path, model, arch=config["arch"], num_classes=num_classes, meta=meta,
                         model_kwargs=model_kwargs)
    if record is not None:
        atomic_write_json(record, rec)
    partial_path.unlink(missing_ok=True)
    print(f"{name}: test accuracy {accuracy:.4f}, {rec['mean_seconds_per_epoch'] or 0:.1f} s/epoch -> "
          f"{final_path}", file=sys.stderr)
    return rec


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m smoothgeo.pipeline.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default params.yaml)")
    parser.add_argument("--name", required=True, type=cli_name("--name"),
                        help="run name in train.scratch or train.finetune")
    parser.add_argument("--checkpoints", default="data/checkpoints", help="checkpoint folder")
    parser.add_argument("--record", default=None, help="JSON record path (default results/training/NAME.json)")
    parser.add_argument("--device", default=None,
                        help="auto (cuda if available), cpu, cuda, cuda:1, ...; default: params 'device' or auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    set_threads(params.get("threads"))
    config = resolve_config(params, args.name)
    device = args.device or params.get("device") or "auto"
    record = args.record if args.record is not None else f"results/training/{args.name}.json"
    return run(config, checkpoints=args.checkpoints, record=record, device=device, progress=not args.quiet)


def cli(argv=None) -> int:
    """:func:`main` for the command line: configuration and input errors are one line on stderr, exit code 2."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError, ckpt.CheckpointError, FloatingPointError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
