"""Fashion-MNIST: reading the IDX files, finding them (``<root>/fashion-mnist``, ``$SMOOTHGEO_DATA_DIRS``, the Debian
folder), copying them into ``<root>`` and downloading them; see :mod:`smoothgeo.data.datasets` for the search order."""
from __future__ import annotations

import gzip
import math
import os
import shutil
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from smoothgeo.data.containers import InMemoryImages
from smoothgeo.data.raw import may_download, refuse_partial_standin
from smoothgeo.store.atomic import atomic_path

__all__ = ["FASHION_FILES", "FASHION_URL", "DEBIAN_FASHION_DIR", "read_idx", "find_fashion", "load_fashion",
           "prepare_fashion"]

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_ALL_FASHION = [f for pair in FASHION_FILES.values() for f in pair]


def read_idx(path, *, ndim: int | None = None) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes into a numpy array.

    Args:
        path: ``*.gz`` IDX file (magic 0x00000801 for labels, 0x00000803 for images).
        ndim: expected number of dimensions (1 labels, 3 images); checked when given.
    Returns:
        uint8 array of the shape stored in the header. Raises ValueError naming the file if it is corrupt.
    """
    path = Path(path)
    fix = "delete it and fetch the original file again (see smoothgeo.data.datasets docs)"
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable gzip file ({exc}); {fix}") from exc
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or (ndim is not None and raw[3] != ndim):
        want = "any" if ndim is None else f"00000{800 + ndim}"
        raise ValueError(f"{path} has IDX magic number {raw[:4].hex() or '(empty)'}, expected {want} "
                         f"(unsigned-byte IDX); the file is corrupt or not Fashion-MNIST; {fix}")
    dims = raw[3]
    if len(raw) < 4 + 4 * dims:
        raise ValueError(f"{path} has a truncated IDX header; {fix}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=dims, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != math.prod(shape):
        raise ValueError(f"{path} header says shape {shape} ({math.prod(shape)} bytes) but holds {data.size} "
                         f"bytes; {fix}")
    return data.reshape(shape)


def _fashion_dirs(root, search_dirs) -> list[Path]:
    if search_dirs is None:
        env = [d for d in os.environ.get("SMOOTHGEO_DATA_DIRS", "").split(os.pathsep) if d]
        search_dirs = [*env, DEBIAN_FASHION_DIR]
    return [Path(root) / "fashion-mnist", *[Path(d) for d in search_dirs]]


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` atomically (tests replace this to forbid the network)."""
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        read_idx(tmp)  # verify the magic number before the file appears under its real name


def _copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def find_fashion(root, search_dirs, download, *, verbose: bool = False) -> Path:
    """The first folder holding all four Fashion-MNIST files; download into ``<root>/fashion-mnist`` if none."""
    dirs, notes = _fashion_dirs(root, search_dirs), []
    for d in dirs:
        missing = [f for f in _ALL_FASHION if not (d / f).is_file()]
        if not missing:
            if verbose:
                print(f"fashion_mnist: found the four IDX files in {d}")
            return d
        notes.append(f"  - {d}: " + ("folder does not exist" if not d.is_dir() else f"missing {', '.join(missing)}"))
    target = dirs[0]
    if may_download(download):
        try:
            for f in _ALL_FASHION:
                if not (target / f).is_file():
                    if verbose:
                        print(f"fashion_mnist: downloading {FASHION_URL}{f} -> {target / f}")
                    _fetch(FASHION_URL + f, target / f)
            return target
        except (OSError, ValueError) as exc:
            notes.append(f"  - download from {FASHION_URL} into {target} failed: {exc}")
    else:
        notes.append(f"  - download from {FASHION_URL} not attempted (download=False or $SMOOTHGEO_OFFLINE set)")
    raise FileNotFoundError(
        "Fashion-MNIST files (" + ", ".join(_ALL_FASHION) + ") not found. Looked in:\n" + "\n".join(notes)
        + f"\nTo get them: `apt-get install dataset-fashion-mnist` (puts them in {DEBIAN_FASHION_DIR}), or copy "
        f"the four .gz files from {FASHION_URL} into {target}/, or run "
        f"`python -m smoothgeo.data.datasets prepare fashion_mnist --root {root}` with network access.")


def load_fashion(split, root, search_dirs, download) -> InMemoryImages:
    folder = find_fashion(root, search_dirs, download)
    refuse_partial_standin(folder)
    img_file, lab_file = (folder / f for f in FASHION_FILES[split])
    images, labels = read_idx(img_file, ndim=3), read_idx(lab_file, ndim=1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{img_file} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise ValueError(f"{img_file} has {len(images)} images but {lab_file} has {len(labels)} labels")
    if labels.size and labels.max() >= 10:
        raise ValueError(f"{lab_file} has label {labels.max()}; Fashion-MNIST labels are 0..9")
    return InMemoryImages(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))



def prepare_fashion(root, search_dirs, download) -> Path:
    """Copy the four files (atomically, file by file) into ``<root>/fashion-mnist`` from the first folder that has
    them, else download them there; every file is checked first. Returns that folder."""
    src = find_fashion(root, search_dirs, download, verbose=True)
    target = Path(root) / "fashion-mnist"
    for f in _ALL_FASHION:
        read_idx(src / f)  # refuse to use or copy a corrupt file
        if src != target:
            _copy(src / f, target / f)
            print(f"fashion_mnist: copied {src / f} -> {target / f}")
    return target
