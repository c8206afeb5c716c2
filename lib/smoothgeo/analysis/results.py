"""Read the pipeline's tidy result files: the model registry, training records, attack and measure tables.

Every analysis (the notebooks, the claims table) starts from these frames; nothing here attacks or trains.

* :func:`model_table`: one row per evaluated model of ``params["models"]`` with its family, strength, seed,
  budget, clean test accuracy and training cost (from ``results/training/<checkpoint>.json``).
* :func:`load_attacks`: ``results/attacks/<model>.csv.gz`` (one row per image x attack setting x evaluated
  method), concatenated, plus the derived ``target_remaining`` (targeted attack: distance to the target after
  the attack over the distance before it).
* :func:`load_measures`: ``results/measures/<model>.csv.gz`` (one row per image), concatenated.

Families and strengths: a model's family is its training recipe (``natural``, ``ssr``, ``madry``,
``weight_decay``, ``ig_norm``), or ``softplus`` for ``<checkpoint>+softplus<beta>`` copies; its strength is the
recipe option that sets how strongly it regularises (:data:`STRENGTH_KEY`), 0 for natural models. A family's
trade-off curve is its strengths plus the natural models trained on the same budget (strength 0).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from smoothgeo.store.atomic import read_json
from smoothgeo.store.names import parse_model_name
from smoothgeo.store.tables import read_table

__all__ = ["STRENGTH_KEY", "model_table", "load_attacks", "load_measures"]

STRENGTH_KEY = {"ssr": "scale", "madry": "epsilon", "weight_decay": "weight_decay", "ig_norm": "lam",
                "softplus": "beta"}


def model_table(params: dict, results: str | Path = "results") -> pd.DataFrame:
    """One row per evaluated model: model, checkpoint, family, strength, seed, init, batches, test_accuracy,
    val_accuracy and plateau_gain (the validation curve's, see the training records), precision and
    seconds_per_batch (wall clock: descriptive, never used by a statistic).

    The accuracy of a softplus copy is not in a training record; it is filled in from the measure tables by
    the caller when needed (column ``test_accuracy`` is NaN here).
    """
    results = Path(results)
    models = params.get("models") or {}
    if not models:
        raise ValueError("params has no 'models' section: list every evaluated model and its checkpoint there")
    rows = []
    for name, checkpoint in models.items():
        base, beta = parse_model_name(name)
        path = results / "training" / f"{checkpoint}.json"
        if not path.exists():
            raise FileNotFoundError(f"no training record {path} for model {name!r}; run `dvc repro` (the "
                                    f"train stage of {checkpoint!r} writes it)")
        rec = read_json(path)
        history = rec.get("history") or []
        batches = sum(h.get("batches", 0) for h in history)
        seconds = sum(rec.get("seconds_per_epoch") or [])
        recipe = rec.get("recipe")
        family = "softplus" if beta is not None else recipe
        if beta is not None:
            strength = beta
        elif family in STRENGTH_KEY:
            strength = float((rec.get("options") or {}).get(STRENGTH_KEY[family], float("nan")))
        else:
            strength = 0.0
        rows.append({"model": name, "checkpoint": checkpoint, "family": family, "recipe": recipe,
                     "strength": strength, "seed": rec.get("seed"), "init": rec.get("init"), "batches": batches,
                     "test_accuracy": float("nan") if beta is not None else rec.get("test_accuracy"),
                     "val_accuracy": rec.get("val_accuracy"), "plateau_gain": rec.get("plateau_gain"),
                     "precision": rec.get("precision"),
                     # wall-clock, descriptive only: never an input of a statistic (it depends on the machine)
                     "seconds_per_batch": seconds / batches if batches else float("nan")})
    return pd.DataFrame(rows)


def _concat(folder: Path, models: Iterable[str] | None, what: str, read=pd.read_csv) -> pd.DataFrame:
    names = list(models) if models is not None else sorted(p.name[:-len(".csv.gz")]
                                                            for p in folder.glob("*.csv.gz"))
    missing = [n for n in names if not (folder / f"{n}.csv.gz").exists()]
    if missing:
        raise FileNotFoundError(f"no {what} table for {missing} in {folder}; run `dvc repro` (the {what} "
                                f"stage of each model writes it)")
    if not names:
        raise FileNotFoundError(f"no {what} tables in {folder}; run `dvc repro`")
    return pd.concat([read(folder / f"{n}.csv.gz") for n in names], ignore_index=True)


def load_attacks(results: str | Path = "results", models: Iterable[str] | None = None) -> pd.DataFrame:
    """The attack tables of ``models`` (default: every table present), one frame."""
    frame = _concat(Path(results) / "attacks", models, "attack", read=read_table)
    # the targeted attack's progress relative to where it started: the share of the clean map's distance to the
    # target that is left (1 = the attack did not move the map towards the target, 0 = it reached it). Raw
    # distances are not comparable across models, whose maps differ in how far apart they start.
    frame["target_remaining"] = frame["target_distance"] / frame["clean_target_distance"]
    return frame


def load_measures(results: str | Path = "results", models: Iterable[str] | None = None) -> pd.DataFrame:
    """The per-image measure tables of ``models`` (default: every table present), one frame."""
    return _concat(Path(results) / "measures", models, "measure")


def load_explanations(results: str | Path = "results", models: Iterable[str] | None = None) -> pd.DataFrame:
    """The faithfulness / stability tables (``results/explanations``, written by the measure stage) of ``models``,
    one frame; empty (no rows) where a run has none."""
    folder = Path(results) / "explanations"
    if not folder.is_dir() or not any(folder.glob("*.csv.gz")):
        from smoothgeo.pipeline.explain import COLUMNS

        return pd.DataFrame(columns=COLUMNS)
    names = None if models is None else [m for m in models if (folder / f"{m}.csv.gz").exists()]
    frames = [pd.read_csv(folder / f"{n}.csv.gz") for n in (names if names is not None else
              sorted(p.name[:-len(".csv.gz")] for p in folder.glob("*.csv.gz")))]
    return pd.concat(frames, ignore_index=True)
