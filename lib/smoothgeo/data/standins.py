"""Synthetic stand-ins for the data sets this machine cannot fetch, written in the real on-disk formats.

CIFAR-10, Flowers-102 and ImageNet need a network (or a licence). To exercise the paper-scale pipelines end to
end without them, :func:`write_standin` writes small synthetic sets with the right shapes and class counts in
exactly the layout the real loaders of :mod:`smoothgeo.data.datasets` read, so the loaders, models, attacks and
notebooks run their real code paths:

* ``cifar10``: ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch`` (python pickles of a dict with
  ``data`` uint8 (N, 3072) and ``labels``), 32x32x3, 10 classes.
* ``flowers102``: ``flowers-102/jpg/image_NNNNN.jpg`` with ``imagelabels.mat`` (labels 1..102) and
  ``setid.mat`` (``trnid``, ``valid``, ``tstid``), JPEGs of 250x250 (the loader resizes and crops to 224).
* ``imagenet``: ``imagenet/val/<wnid>/<image>.JPEG``, 1000 class folders named like wnids (``n00000000`` ...,
  sorted order = label), JPEGs of 250x250.
* ``fashion_mnist``: the four IDX gz files, 28x28x1, 10 classes (for completeness; the real set ships with Debian).

The images are learnable but not trivial: class ``c`` has its own colour tint and a stripe pattern of its own
orientation and frequency, plus per-image Gaussian noise and a random shift, so a few batches of training
already move accuracy above chance. Everything is seeded; the same call writes the same bytes. Files are
written atomically (a killed run leaves no half-written image). A folder that already holds the real data set is
never touched: ``write_standin`` refuses unless the folder carries the stand-in marker ``STANDIN``, so synthetic
data cannot silently mix with or overwrite a real copy. The marker is written first, saying ``INCOMPLETE``, and
replaced atomically by its final text after the last file: an interrupted write leaves a folder that the next
call rewrites and that every loader of :mod:`smoothgeo.data.datasets` refuses, never one taken as complete.

Command line (the data stage calls it through :mod:`smoothgeo.pipeline.data` when ``data.standin`` is set)::

    python -m smoothgeo.data.standins cifar10 --root data/raw --train 64 --test 32
"""
from __future__ import annotations

import argparse
import gzip
import io
import pickle
import shutil
from pathlib import Path

import numpy as np

from smoothgeo.data.datasets import DATASETS
from smoothgeo.data.fashion import FASHION_FILES
from smoothgeo.data.raw import STANDIN_INCOMPLETE, STANDIN_MARKER
from smoothgeo.store.atomic import atomic_path

__all__ = ["write_standin", "standin_images", "MARKER", "FILE_SIZE"]

MARKER = STANDIN_MARKER
FILE_SIZE = 250  # side of the stand-in JPEGs of the image-folder sets (the loader crops 224 from a 256 resize)


def standin_images(labels: np.ndarray, *, size: int, channels: int, num_classes: int, seed: int) -> np.ndarray:
    """uint8 images (N, size, size, channels) whose content depends on the class (tint + oriented stripes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cls = np.arange(num_classes)
    angle = (cls * 2.399963) % np.pi                  # golden-angle spread of orientations
    freq = 2.0 + (cls % 7)                            # 2 .. 8 periods across the image
    tint = np.random.default_rng(12345).uniform(0.2, 0.8, size=(num_classes, channels))
    out = np.empty((len(labels), size, size, channels), dtype=np.uint8)
    for i, c in enumerate(labels):
        shift = rng.uniform(0, 1, size=2)
        phase = (np.cos(angle[c]) * (xx + shift[0]) + np.sin(angle[c]) * (yy + shift[1])) * freq[c] * 2 * np.pi
        stripes = 0.25 * np.sin(phase)[..., None]
        img = tint[c][None, None, :] + stripes + rng.normal(0, 0.08, size=(size, size, channels))
        out[i] = np.clip(img * 255.0, 0, 255).round().astype(np.uint8)
    return out


def _labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    """Balanced labels (every class once before any repeats), shuffled."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _cifar(folder: Path, n_train: int, n_test: int, seed: int) -> None:
    per_batch = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    train_labels = np.split(_labels(n_train, 10, seed), np.cumsum(per_batch)[:-1])
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, (name, labels) in enumerate(zip(names, train_labels + [_labels(n_test, 10, seed + 1)])):
        n = len(labels)
        imgs = standin_images(labels, size=32, channels=3, num_classes=10, seed=seed + 100 + k)
        data = imgs.transpose(0, 3, 1, 2).reshape(n, 3072)  # rows: 1024 red, 1024 green, 1024 blue
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                 b"filenames": [f"standin_{k}_{i}.png".encode() for i in range(n)]}
        _write_bytes(folder / name, pickle.dumps(batch, protocol=2))


def _flowers(folder: Path, n_train: int, n_test: int, seed: int) -> None:
    from scipy.io import savemat

    n_val = max(1, n_test // 2)
    n = n_train + n_val + n_test
    labels = _labels(n, 102, seed)
    imgs = standin_images(labels, size=FILE_SIZE, channels=3, num_classes=102, seed=seed + 100)
    for i in range(n):
        _write_bytes(folder / "jpg" / f"image_{i + 1:05d}.jpg", _jpeg(imgs[i]))
    ids = np.arange(1, n + 1)
    for name, payload in (("imagelabels.mat", {"labels": (labels + 1)[None, :].astype(np.uint8)}),
                          ("setid.mat", {"trnid": ids[:n_train][None, :].astype(np.uint16),
                                         "valid": ids[n_train:n_train + n_val][None, :].astype(np.uint16),
                                         "tstid": ids[n_train + n_val:][None, :].astype(np.uint16)})):
        buf = io.BytesIO()
        savemat(buf, payload)
        _write_bytes(folder / name, buf.getvalue())


def _imagenet(folder: Path, n_test: int, seed: int) -> None:
    labels = _labels(n_test, 1000, seed)
    imgs = standin_images(labels, size=FILE_SIZE, channels=3, num_classes=1000, seed=seed + 100)
    for c in range(1000):  # every class folder exists, so sorted folder order gives labels 0..999
        (folder / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(labels):
        _write_bytes(folder / f"n{c:08d}" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(imgs[i]))


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(header + array.astype(np.uint8).tobytes())
    return buf.getvalue()


def _fashion(folder: Path, n_train: int, n_test: int, seed: int) -> None:
    for k, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        labels = _labels(n, 10, seed + k)
        imgs = standin_images(labels, size=28, channels=1, num_classes=10, seed=seed + 100 + k)[..., 0]
        img_file, lab_file = FASHION_FILES[split]
        _write_bytes(folder / img_file, _idx(imgs))
        _write_bytes(folder / lab_file, _idx(labels))


def write_standin(name: str, root="data/raw", *, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Write a synthetic stand-in of data set ``name`` under ``<root>`` in the real layout; return its folder.

    Args:
        name: ``cifar10``, ``flowers102``, ``imagenet`` or ``fashion_mnist``.
        root: the data root (the same ``data.root`` the loaders read).
        n_train: training images (ImageNet has no training split here: ignored).
        n_test: test images (ImageNet: validation images; Flowers: also ``max(1, n_test // 2)`` validation images).
        seed: seed of labels, noise and shifts.
    Raises:
        ValueError: unknown name or counts < 1.
        FileExistsError: the folder exists and is not a stand-in (it may hold the real data set).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    if int(n_test) < 1 or (name != "imagenet" and int(n_train) < 1):
        raise ValueError(f"stand-in sizes must be >= 1, got train {n_train} and test {n_test}")
    folder = Path(root) / DATASETS[name]["folder"]
    if folder.exists():
        if not (folder / MARKER).exists():
            raise FileExistsError(f"{folder} exists and is not a synthetic stand-in (no {MARKER} file): it may hold "
                                  f"the real {name}. Remove 'standin' from the profile's data section to use it, "
                                  f"or point data.root elsewhere.")
        shutil.rmtree(folder)  # an old stand-in: rewrite it whole, so sizes never mix
    folder.mkdir(parents=True)
    # the marker comes first, so an interrupted write leaves a folder known to be a stand-in (rewritten by the next
    # call, refused by the loaders) and never one that looks like a complete data set
    _write_bytes(folder / MARKER, (f"{STANDIN_INCOMPLETE}: synthetic stand-in for {name} being written by "
                                   f"smoothgeo.data.standins; not usable until this line is replaced. Not real "
                                   f"data.\n").encode())
    writer = {"cifar10": lambda: _cifar(folder, int(n_train), int(n_test), seed),
              "flowers102": lambda: _flowers(folder, int(n_train), int(n_test), seed),
              "imagenet": lambda: _imagenet(folder, int(n_test), seed),
              "fashion_mnist": lambda: _fashion(folder, int(n_train), int(n_test), seed)}[name]
    writer()
    _write_bytes(folder / MARKER, (f"synthetic stand-in for {name}, written by smoothgeo.data.standins: "
                                   f"train {n_train}, test {n_test}, seed {seed}. Not real data.\n").encode())
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m smoothgeo.data.standins", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(DATASETS))
    parser.add_argument("--root", default="data/raw")
    parser.add_argument("--train", type=int, default=64, help="training images")
    parser.add_argument("--test", type=int, default=32, help="test (ImageNet: validation) images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        folder = write_standin(args.name, args.root, n_train=args.train, n_test=args.test, seed=args.seed)
    except (ValueError, FileExistsError) as exc:
        parser.exit(1, f"error: {exc}\n")
    print(f"{args.name}: wrote a synthetic stand-in in {folder} (train {args.train}, test {args.test})")


if __name__ == "__main__":
    main()
