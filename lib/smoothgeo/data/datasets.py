"""Data sets as images in [0, 1]: Fashion-MNIST, CIFAR-10, Flowers-102, ImageNet validation, a 2-D toy set.

Every item is ``(image float32 (C, H, W) in [0, 1], label int64)``; normalisation, if any, lives inside the
model. Raw files live under ``<root>/<folder>`` (``root`` defaults to ``data/raw``, git-ignored):

* ``fashion_mnist``: the four original IDX gz files, read with numpy. Searched in ``<root>/fashion-mnist``,
  then the folders in ``$SMOOTHGEO_DATA_DIRS`` (``os.pathsep``-separated), then ``/usr/share/datasets/fashion-mnist``
  (Debian package ``dataset-fashion-mnist``); ``search_dirs=[...]`` replaces the last two. If none has them,
  they are downloaded into ``<root>/fashion-mnist`` from the canonical S3 mirror.
* ``cifar10``: the ``cifar-10-batches-py`` pickles (own reader, no md5 check; a restricted unpickler that builds
  only dicts, lists, strings, numbers and numpy arrays, so a crafted file cannot run code); download via
  torchvision.
* ``flowers102``: ``<root>/flowers-102/{jpg/, imagelabels.mat, setid.mat}``; download via torchvision.
* ``imagenet``: ``<root>/imagenet/val/<class>/<image>`` (ImageFolder layout, class folders sorted give the
  label indices, so wnid-named folders match torchvision's pretrained models). Never downloaded (licence).

``download=None`` tries a download when files are missing unless ``$SMOOTHGEO_OFFLINE`` is set; ``True``
always may; ``False`` never does. Fashion-MNIST and CIFAR-10 are held in memory as uint8; the image-folder
sets are decoded lazily (resize shorter side to ``round(size * 256 / 224)``, centre crop ``size``).

This module is the registry and the entry points; the readers live in :mod:`smoothgeo.data.fashion`,
:mod:`smoothgeo.data.cifar` and :mod:`smoothgeo.data.folders`, the containers in :mod:`smoothgeo.data.containers`,
the download policy and stand-in markers in :mod:`smoothgeo.data.raw`.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from smoothgeo.data.cifar import load_cifar
from smoothgeo.data.containers import InMemoryImages
from smoothgeo.data.fashion import load_fashion, prepare_fashion
from smoothgeo.data.folders import load_flowers, load_imagenet
from smoothgeo.data.raw import ensure_folder

__all__ = ["DATASETS", "dataset_info", "load_dataset", "load_tensors", "prepare", "toy_2d"]

DATASETS = {
    "fashion_mnist": {"num_classes": 10, "channels": 1, "image_size": 28, "folder": "fashion-mnist",
                      "splits": ("train", "test")},
    "cifar10": {"num_classes": 10, "channels": 3, "image_size": 32, "folder": "cifar-10-batches-py",
                "splits": ("train", "test")},
    "flowers102": {"num_classes": 102, "channels": 3, "image_size": 224, "folder": "flowers-102",
                   "splits": ("train", "val", "test")},
    "imagenet": {"num_classes": 1000, "channels": 3, "image_size": 224, "folder": "imagenet/val",
                 "splits": ("val", "test")},
}


def dataset_info(name: str) -> dict:
    """Number of classes, channels, native image size, raw folder and splits of data set ``name``."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return {"name": name, **DATASETS[name]}


def _check_split(name: str, split: str) -> None:
    splits = dataset_info(name)["splits"]
    if split not in splits:
        raise ValueError(f"split {split!r} is not available for {name}; choose one of {list(splits)}")


def _folder(name: str, root) -> Path:
    return Path(root) / DATASETS[name]["folder"]


# ---------------------------------------------------------------------------------------------- public API
def load_dataset(name: str, split: str, *, root="data/raw", download=None, image_size: int | None = None,
                 search_dirs=None) -> Dataset:
    """A data set of ``(image float32 (C, H, W) in [0, 1], label int64)`` items.

    Args:
        name: one of ``fashion_mnist``, ``cifar10``, ``flowers102``, ``imagenet``.
        split: ``train``/``test``; ``val`` too for flowers102; imagenet takes ``val`` or ``test`` (the val folder).
        root: folder holding the raw data folders.
        download: None tries when files are missing (unless ``$SMOOTHGEO_OFFLINE``), True may, False never.
        image_size: crop size for flowers102/imagenet (default 224); the in-memory sets only take their own size.
        search_dirs: Fashion-MNIST only: folders searched after ``<root>/fashion-mnist`` instead of
            ``$SMOOTHGEO_DATA_DIRS`` and the Debian folder.
    Returns:
        ``InMemoryImages`` (fashion_mnist, cifar10) or ``ImageFiles`` (lazy; flowers102, imagenet).
    """
    info = dataset_info(name)
    _check_split(name, split)
    if name in ("fashion_mnist", "cifar10"):
        if image_size not in (None, info["image_size"]):
            raise ValueError(f"image_size={image_size} is not supported for {name}; it is stored at "
                             f"{info['image_size']}x{info['image_size']} (pass None)")
        if name == "fashion_mnist":
            return load_fashion(split, root, search_dirs, download)
        return load_cifar(split, _folder(name, root), root, download)
    size = int(image_size or info["image_size"])
    if size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size}")
    if name == "flowers102":
        return load_flowers(split, _folder(name, root), root, download, size, info["num_classes"])
    return load_imagenet(_folder(name, root), size)


def load_tensors(name: str, split: str, *, root="data/raw", limit: int | None = None, seed: int | None = None,
                 download=None, image_size: int | None = None, search_dirs=None,
                 offset: int = 0) -> tuple[Tensor, Tensor]:
    """Stack (part of) a data set into tensors.

    Args:
        name, split, root, download, image_size, search_dirs: as in :func:`load_dataset`.
        limit: number of items (None: all; more than the set holds: all).
        seed: None takes the first ``limit`` items in file order; an int takes a random subset of ``limit``
            items drawn with ``torch.Generator().manual_seed(seed)``, returned in file order. Ignored
            when ``limit`` is None.
        offset: with ``seed``, skip the first ``offset`` items of the seeded permutation (``offset=limit`` gives
            a subset disjoint from the one with ``offset=0``).
    Returns:
        ``x`` float32 (N, C, H, W) in [0, 1] and ``y`` int64 (N,).
    """
    ds = load_dataset(name, split, root=root, download=download, image_size=image_size, search_dirs=search_dirs)
    n = len(ds)
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit}")
    if limit is None or int(limit) >= n:
        idx = torch.arange(n)
    elif seed is None:
        idx = torch.arange(int(limit))
    else:
        g = torch.Generator().manual_seed(int(seed))
        if offset < 0 or int(offset) + int(limit) > n:
            raise ValueError(f"offset {offset} + limit {limit} exceeds the {n} items of {name}/{split}")
        idx = torch.randperm(n, generator=g)[int(offset): int(offset) + int(limit)].sort().values
    if isinstance(ds, InMemoryImages):
        return ds.tensors(idx)
    items = [ds[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]).long()


def prepare(name: str, *, root="data/raw", download=None, search_dirs=None) -> Path:
    """Make sure the raw files of ``name`` are in ``<root>/<folder>`` and return that folder.

    Fashion-MNIST is copied (atomically, file by file) from the first other search folder that has it
    (``$SMOOTHGEO_DATA_DIRS``, then the Debian folder), else downloaded. CIFAR-10 and Flowers-102 are
    downloaded through torchvision if missing; ImageNet is only checked. Prints what it did.

    Args:
        name: data set name.
        root: folder holding the raw data folders.
        download: as in :func:`load_dataset`.
        search_dirs: Fashion-MNIST only, as in :func:`load_dataset`.
    Returns:
        The data set's folder under ``root``.
    """
    dataset_info(name)
    if name == "fashion_mnist":
        return prepare_fashion(root, search_dirs, download)
    if name == "imagenet":
        n = len(load_imagenet(_folder(name, root), 224))
        folder = _folder(name, root)
    else:
        required = {"cifar10": ["data_batch_1", "test_batch"], "flowers102": ["jpg", "imagelabels.mat", "setid.mat"]}
        folder = ensure_folder(name, _folder(name, root), root, download, required[name])
        n = len(load_dataset(name, "test", root=root, download=False))
    print(f"{name}: found in {folder} ({n} {'val' if name == 'imagenet' else 'test'} images)")
    return folder


def toy_2d(n: int, *, seed: int = 0, kind: str = "moons", noise: float = 0.1) -> tuple[Tensor, Tensor]:
    """A 2-D two-class toy set for decision-surface pictures.

    Args:
        n: number of points (classes get ``n // 2`` and ``n - n // 2``).
        seed: seed of the ``torch.Generator`` for positions, noise and shuffling.
        kind: ``moons`` (two interleaving half-moons, class 0 the upper one) or ``circles`` (class 1 inside,
            radius 0.5 vs 1).
        noise: standard deviation of the Gaussian noise added to each coordinate.
    Returns:
        ``x`` float32 (n, 2) and ``y`` int64 (n,), shuffled.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    n0, n1 = n // 2, n - n // 2
    if kind == "moons":
        t0, t1 = torch.rand(n0, generator=g) * math.pi, torch.rand(n1, generator=g) * math.pi
        x0 = torch.stack([t0.cos(), t0.sin()], 1)
        x1 = torch.stack([1 - t1.cos(), 0.5 - t1.sin()], 1)
    elif kind == "circles":
        t0, t1 = torch.rand(n0, generator=g) * 2 * math.pi, torch.rand(n1, generator=g) * 2 * math.pi
        x0 = torch.stack([t0.cos(), t0.sin()], 1)
        x1 = 0.5 * torch.stack([t1.cos(), t1.sin()], 1)
    else:
        raise ValueError(f"kind must be 'moons' or 'circles', got {kind!r}")
    x = torch.cat([x0, x1]) + noise * torch.randn(n, 2, generator=g)
    y = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n1, dtype=torch.long)])
    perm = torch.randperm(n, generator=g)
    return x[perm].float(), y[perm]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m smoothgeo.data.datasets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="put a data set's raw files under ROOT (copy or download)")
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--root", default="data/raw")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    args = parser.parse_args(argv)
    try:
        prepare(args.name, root=args.root, download=False if args.no_download else None)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
