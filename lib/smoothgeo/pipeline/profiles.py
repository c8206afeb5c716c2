"""Toy versions of the paper-scale profiles: the same pipeline on synthetic stand-in data at tiny sizes.

``bash scripts/repro.sh cifar10-toy`` (likewise ``flowers-toy``, ``imagenet-toy``) runs the profile
``profiles/cifar10.yaml`` after :func:`toy` has shrunk it; CI runs all three on the CPU. The toy profile keeps
everything that decides which code runs: the data set's shapes and class count (through a synthetic stand-in in
the real file layout, :mod:`smoothgeo.data.standins`), the architectures (ResNet-20 with BatchNorm, the 224x224
networks, ResNet-50 with random weights instead of the download), every model and recipe (SSR included) and
its options, every attack setting and kind, ``k`` (1000 on the 224x224 sets), the comparisons and every
notebook. It only caps sizes (images, batches, steps, samples, restarts, surrogates) and keeps two seeds per
model group. Its numbers say nothing
about the paper; they show that the paper-scale pipeline runs before anyone spends GPU hours on it.

    python -m smoothgeo.pipeline.profiles toy profiles/cifar10.yaml runs/cifar10-toy/.profile-source.yaml
"""
from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import yaml

from smoothgeo.store.atomic import atomic_path

__all__ = ["TOY_CAPS", "TOY_STANDIN", "toy", "main"]

# key -> the largest value a toy run keeps (min(value, cap); zero and null stay as they are)
TOY_CAPS = {
    "n_images": 2,            # attack/measure images
    "steps": 2,               # attack steps, PGD steps of Madry/IG-NORM and the Lipschitz climbs, IG steps
    "ig_steps": 2,
    "samples": 2,             # SG/UG samples, Lipschitz neighbours
    "adversarial_samples": 1,
    "restarts": 1,            # (the smoke profile runs the restart code on the CPU)
    "max_batches": 2,
    "epochs": 1,
    "batch_size": 4,
    "chunk_size": 2,
    "power_iters": 3,
    "n_train": 64,            # toy_2d
    "train_limit": 16,
    "test_limit": 16,
}
TOY_LIST_CAPS = {"surrogates": 2}   # lists keep their first entries
TOY_STANDIN = {"train": 16, "test": 16}   # synthetic images per split (ImageNet: validation only)
TOY_SEEDS = 2                             # seeds kept per model group (the seed pairing needs two)
_SEED = re.compile(r"-s(?P<seed>\d+)(?:\+|$)")


def _thin(node, seeds: int):
    """Drop every model of seed >= ``seeds``: mapping keys, list entries and mapping values naming one."""
    def kept(name) -> bool:
        m = _SEED.search(str(name))
        return m is None or int(m["seed"]) < seeds

    if isinstance(node, dict):
        return {k: _thin(v, seeds) for k, v in node.items()
                if kept(k) and not (isinstance(v, str) and not kept(v))}
    if isinstance(node, list):
        return [_thin(v, seeds) for v in node if not (isinstance(v, str) and not kept(v))]
    return node


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _cap(value, cap):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
        return value
    return type(value)(min(value, cap))


def _shrink(node, caps: dict):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in caps and not isinstance(value, (dict, list)):
                out[key] = _cap(value, caps[key])
            elif key in TOY_LIST_CAPS and isinstance(value, list):
                out[key] = [_shrink(v, caps) for v in value[:TOY_LIST_CAPS[key]]]
            else:
                out[key] = _shrink(value, caps)
        return out
    if isinstance(node, list):
        return [_shrink(v, caps) for v in node]
    return node


def toy(profile: dict, *, name: str | None = None) -> dict:
    """The toy version of a paper-scale profile (a new dict; ``profile`` is not changed).

    A profile may tune its own toy in a ``toy`` section (removed from the result): ``seeds`` (default
    :data:`TOY_SEEDS`), ``caps`` (merged over :data:`TOY_CAPS`) and ``set`` (merged over the toy profile last),
    e.g. ``toy: {seeds: 1, caps: {steps: 1}, set: {measures: {jacobian: false}}}`` where the full-size network
    makes even the toy slow on a CPU.

    Sizes are capped by :data:`TOY_CAPS` wherever the key appears; ``train_limit``/``test_limit`` null (all)
    become the cap, and so do the default ``max_batches`` and ``measures.power_iters``. Models of seed
    ``seeds`` and above are dropped everywhere (two seeds keep the seed-pairing code in play). The data set
    becomes a synthetic stand-in (:data:`TOY_STANDIN`); ``pretrained`` weights become random ones (nothing is
    downloaded); every image is attacked (``attacks.images: all``: the barely trained models classify almost
    nothing correctly). The model names, recipes, settings and comparisons are unchanged.
    """
    if not isinstance(profile, dict) or not {"data", "models", "attacks"} <= set(profile):
        raise ValueError("a toy profile is made from a full profile with 'data', 'models' and 'attacks' sections "
                         "(e.g. profiles/cifar10.yaml)")
    profile = copy.deepcopy(profile)
    own = profile.pop("toy", None) or {}
    if not isinstance(own, dict) or set(own) - {"seeds", "caps", "set"}:
        raise ValueError(f"a profile's 'toy' section takes seeds, caps and set, got {own!r}")
    caps = {**TOY_CAPS, **(own.get("caps") or {})}
    out = _thin(_shrink(profile, caps), int(own.get("seeds", TOY_SEEDS)))
    out["profile"] = name or f"{profile.get('profile', 'profile')}-toy"
    data = out["data"]
    for key in ("train_limit", "test_limit"):
        if data.get(key) is None:
            data[key] = caps[key]
    data["standin"] = dict(TOY_STANDIN)
    # random-weight models classify almost nothing correctly: attack every image (its prediction as label)
    out["attacks"]["images"] = "all"
    for group in ("scratch", "finetune"):
        for entry in (out.get("train", {}).get(group) or {}).values():
            if entry.get("pretrained"):
                entry["pretrained"] = False
    defaults = out.get("train", {}).get("defaults", {})
    if defaults.get("pretrained"):
        defaults["pretrained"] = False
    if "max_batches" in defaults:
        defaults["max_batches"] = caps["max_batches"]
    if isinstance(out.get("measures"), dict):   # the power route's default of 100 iterations, capped too
        out["measures"].setdefault("power_iters", caps["power_iters"])
        explain = out["measures"].setdefault("explain", {})   # faithfulness / stability: their defaults, capped
        for key, cap in (("n_images", "n_images"), ("samples", "samples"), ("infidelity_samples", "samples"),
                         ("deletion_steps", "steps")):
            explain[key] = _cap(explain.get(key, 10 if key != "n_images" else 100), caps[cap])
        robust = out["measures"].setdefault("robust", {})
        robust["steps"] = _cap(robust.get("steps", 20), caps["steps"])
    return _merge(out, own.get("set") or {})


def _header(src: Path) -> str:
    return (f"# GENERATED by `python -m smoothgeo.pipeline.profiles toy {src}`: the toy version of that profile (synthetic\n"
            f"# stand-in data, tiny sizes, random weights). Edit {src} instead; this file is rewritten from it.\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m smoothgeo.pipeline.profiles", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("toy", help="write the toy version of a profile")
    p.add_argument("source", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--name", default=None, help="profile name (default: <source profile>-toy)")
    args = parser.parse_args(argv)
    try:
        with open(args.source) as fh:
            profile = yaml.safe_load(fh)
        text = yaml.safe_dump(toy(profile, name=args.name), sort_keys=False, width=120)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        parser.exit(1, f"error: {exc}\n")
    with atomic_path(args.output) as tmp:
        Path(tmp).write_text(_header(args.source) + text)


if __name__ == "__main__":
    main()
