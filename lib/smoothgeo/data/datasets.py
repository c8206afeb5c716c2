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
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import pickle
import re
import shutil
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from smoothgeo.store.atomic import atomic_path

__all__ = ["DATASETS", "dataset_info", "load_dataset", "load_tensors", "prepare", "toy_2d", "read_idx",
           "InMemoryImages", "ImageFiles", "FASHION_FILES", "FASHION_URL", "DEBIAN_FASHION_DIR", "IMAGE_FORMATS",
           "STANDIN_MARKER", "STANDIN_INCOMPLETE"]

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
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_ALL_FASHION = [f for pair in FASHION_FILES.values() for f in pair]
_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
#: the PIL decoders the image-folder sets may use: Flowers-102 ships JPEGs, ImageNet's validation set JPEGs (a few
#: of them are PNG or CMYK data behind a .JPEG name); anything else is refused before a decoder runs
IMAGE_FORMATS = ("JPEG", "PNG")


def dataset_info(name: str) -> dict:
    """Number of classes, channels, native image size, raw folder and splits of data set ``name``."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return {"name": name, **DATASETS[name]}


def _check_split(name: str, split: str) -> None:
    splits = dataset_info(name)["splits"]
    if split not in splits:
        raise ValueError(f"split {split!r} is not available for {name}; choose one of {list(splits)}")


#: the file that marks a folder as a synthetic stand-in (:mod:`smoothgeo.data.standins`); while the stand-in is being
#: written it starts with :data:`STANDIN_INCOMPLETE`, and such a folder is refused by every loader
STANDIN_MARKER = "STANDIN"
STANDIN_INCOMPLETE = "INCOMPLETE"


def _refuse_partial_standin(folder: Path) -> None:
    """ValueError if ``folder`` holds a stand-in whose writing did not finish (its marker still says so)."""
    marker = Path(folder) / STANDIN_MARKER
    try:
        head = marker.read_text(errors="replace")[:len(STANDIN_INCOMPLETE)]
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return
    if head == STANDIN_INCOMPLETE:
        raise ValueError(f"{folder} holds a synthetic stand-in whose writing was interrupted ({marker} says "
                         f"{STANDIN_INCOMPLETE}); write it again with the data stage (`dvc repro data`) or "
                         f"`python -m smoothgeo.data.standins NAME --root ROOT`, or delete the folder")


def _may_download(download) -> bool:
    if download is None:
        return os.environ.get("SMOOTHGEO_OFFLINE", "").strip().lower() in ("", "0", "false", "no")
    return bool(download)


# ----------------------------------------------------------------------------------------------- containers
class InMemoryImages(Dataset):
    """Images held as uint8 (N, C, H, W) with int64 labels (N,); items come out as float32 in [0, 1].

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
    """

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"need uint8 images (N, C, H, W) and labels (N,), got {images.dtype} "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i].float().div_(255.0), self.labels[i]

    def tensors(self, indices=None) -> tuple[Tensor, Tensor]:
        """All items (or ``indices``) as float32 (N, C, H, W) in [0, 1] and int64 (N,)."""
        images, labels = (self.images, self.labels) if indices is None else (self.images[indices],
                                                                             self.labels[indices])
        return images.float().div_(255.0), labels.clone()


class ImageFiles(Dataset):
    """Image files decoded lazily: RGB, resize shorter side, centre crop, float32 (3, size, size) in [0, 1].

    Only the decoders of :data:`IMAGE_FORMATS` are tried (PIL's ``formats=``): a file of another format (EPS,
    which PIL would hand to Ghostscript, PSD, ...) is refused with a ValueError naming it, whatever its suffix.

    Args:
        paths: image files.
        labels: one class index per file.
        size: side of the centre crop; the shorter side is first resized to ``round(size * 256 / 224)``.
        formats: the PIL formats allowed (default :data:`IMAGE_FORMATS`).
    """

    def __init__(self, paths, labels, *, size: int = 224, formats=None):
        from torchvision import transforms

        self.paths, self.labels = [Path(p) for p in paths], torch.as_tensor(list(labels), dtype=torch.long)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"{len(self.paths)} image files but {tuple(self.labels.shape)} labels; need one per file")
        self.formats = tuple(IMAGE_FORMATS if formats is None else formats)
        self.transform = transforms.Compose([transforms.Resize(round(size * 256 / 224)),
                                             transforms.CenterCrop(size), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path, formats=self.formats) as im:
                image = self.transform(im.convert("RGB"))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise ValueError(f"{path} cannot be read as an image of the formats {', '.join(self.formats)} "
                             f"({type(exc).__name__}: {exc}); replace or delete it") from exc
        return image, self.labels[i]


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
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


def _find_fashion(root, search_dirs, download, *, verbose: bool = False) -> Path:
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
    if _may_download(download):
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


def _load_fashion(split, root, search_dirs, download) -> InMemoryImages:
    folder = _find_fashion(root, search_dirs, download)
    _refuse_partial_standin(folder)
    img_file, lab_file = (folder / f for f in FASHION_FILES[split])
    images, labels = read_idx(img_file, ndim=3), read_idx(lab_file, ndim=1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{img_file} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise ValueError(f"{img_file} has {len(images)} images but {lab_file} has {len(labels)} labels")
    if labels.size and labels.max() >= 10:
        raise ValueError(f"{lab_file} has label {labels.max()}; Fashion-MNIST labels are 0..9")
    return InMemoryImages(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


# ---------------------------------------------------------------------------------------------- CIFAR-10
def _torchvision_download(name: str, root) -> None:
    """Fetch ``name`` with torchvision into ``root`` (tests replace this to forbid the network)."""
    from torchvision import datasets

    if name == "cifar10":
        datasets.CIFAR10(str(root), train=True, download=True)
    elif name == "flowers102":
        datasets.Flowers102(str(root), split="train", download=True)


def _ensure_folder(name: str, root, download, required) -> Path:
    folder = Path(root) / DATASETS[name]["folder"]
    _refuse_partial_standin(folder)
    missing = [r for r in required if not (folder / r).exists()]
    if not missing:
        return folder
    how = f"`python -m smoothgeo.data.datasets prepare {name} --root {root}` with network access"
    if _may_download(download):
        try:
            _torchvision_download(name, root)
            if all((folder / r).exists() for r in required):
                return folder
            note = f"torchvision's download finished but {folder} still lacks {missing}"
        except Exception as exc:  # network errors come in many types; report, do not hide
            note = f"download through torchvision failed: {exc}"
    else:
        note = "download not attempted (download=False or $SMOOTHGEO_OFFLINE set)"
    raise FileNotFoundError(f"{name} not found: {folder} is missing {', '.join(missing)}; {note}. "
                            f"To get it: run {how}, or place the files there yourself.")


_DTYPE = re.compile(r"^[<>|=]?[biuf][1248]$")   # the numeric dtypes a CIFAR batch may hold (bool, ints, floats)


class _NdarrayType:
    """Stands for the global ``numpy.ndarray`` in a CIFAR pickle: only :func:`_reconstruct_array` accepts it, and it
    cannot be called, so no opcode of the file reaches the ``ndarray`` constructor (which, given an object dtype and
    a buffer of the file's bytes, makes pointers out of those bytes)."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray directly (arrays are built only through "
                                     "numpy's _reconstruct path)")


_NDARRAY = _NdarrayType()


class _PendingDtype:
    """A numpy dtype named in the file, checked before it exists: only plain numeric types (``u1``, ``<i8``, ``<f4``
    ...), byte order from the pickled state, no fields, no sub-arrays, never ``object``."""

    def __init__(self, spec, align=False, copy=False):
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        if not isinstance(spec, str) or not _DTYPE.match(spec):
            raise pickle.UnpicklingError(f"refusing dtype {spec!r}: a CIFAR-10 batch holds numeric arrays only "
                                         f"(bool, integer or float dtypes; no object, string or structured dtypes)")
        self.spec, self.dtype = spec, np.dtype(spec)

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5 or state[0] not in (3, 4):
            raise pickle.UnpicklingError(f"refusing a dtype state of {type(state).__name__} {str(state)[:60]}")
        order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "=") or any(v is not None for v in state[2:5]):
            raise pickle.UnpicklingError("refusing a dtype with fields or sub-arrays (a CIFAR-10 batch holds plain "
                                         "numeric arrays)")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


def _numeric_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, _PendingDtype) or not isinstance(getattr(dtype, "dtype", None), np.dtype):
        raise pickle.UnpicklingError(f"refusing an array whose dtype is a {type(dtype).__name__}")
    return dtype.dtype


def _array_from_bytes(data, dtype, shape, order: str) -> np.ndarray:
    """A fresh array of ``shape`` from the raw bytes of the file, sizes checked before anything is built."""
    dtype = _numeric_dtype(dtype)
    if isinstance(data, str):  # a Python 2 str unpickled with encoding="latin1"
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise pickle.UnpicklingError(f"refusing array data of type {type(data).__name__} (raw bytes expected)")
    if (not isinstance(shape, tuple) or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"refusing array shape {shape!r}")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise pickle.UnpicklingError(f"array of shape {shape} and dtype {dtype} needs "
                                     f"{math.prod(shape) * dtype.itemsize} bytes, the file holds {len(data)}")
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"refusing array order {order!r}")
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape, order=order).copy()


class _PendingArray:
    """What ``numpy...._reconstruct`` gives in a CIFAR pickle: the array is built from the pickled state (BUILD)
    by :func:`_array_from_bytes`, after its dtype, shape and size are checked."""

    array = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, is_fortran, data)
        if not isinstance(state, tuple) or len(state) != 4 or not isinstance(state[2], bool):
            raise pickle.UnpicklingError("refusing an array state that is not (shape, dtype, is_fortran, bytes)")
        shape, dtype, fortran, data = state
        self.array = _array_from_bytes(data, dtype, shape, "F" if fortran else "C")


def _reconstruct_array(cls, shape, typecode) -> _PendingArray:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError(f"refusing to reconstruct a {type(cls).__name__} (only numpy.ndarray)")
    return _PendingArray()


def _frombuffer(data, dtype, shape, order) -> np.ndarray:
    return _array_from_bytes(data, dtype, shape, order)


def _latin1(text, encoding="latin1"):
    """``_codecs.encode(text, 'latin1')``: how Python 3 writes bytes at pickle protocol 2 (latin-1 only)."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode of a {type(text).__name__} with {encoding!r}")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 python batches: dicts, lists, strings, numbers and plain numeric numpy arrays only.

    The batches hold a dict of bytes/str keys, a list of int labels, a list of file names and one uint8 numpy
    array. The few globals that takes (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``,
    ``numeric._frombuffer`` at protocol 5, ``_codecs.encode`` for byte strings written by Python 3 at protocol 2)
    are replaced by stand-ins of this module: numpy's own constructors are never called with the file's
    arguments. A dtype is checked when it is named (numeric only: an object dtype is refused before any array
    exists), an array is built by ``np.frombuffer`` from the file's bytes after its dtype, shape and size are
    checked, and ``numpy.ndarray`` itself cannot be called. Any other global (``os.system``, ``builtins.eval``,
    ...) is refused before it can be called.
    """

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct_array,
                ("numpy._core.multiarray", "_reconstruct"): _reconstruct_array,
                ("numpy.core.numeric", "_frombuffer"): _frombuffer,
                ("numpy._core.numeric", "_frombuffer"): _frombuffer,
                ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _PendingDtype, ("_codecs", "encode"): _latin1}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (a CIFAR-10 batch holds only "
                                     f"dicts, lists and numpy arrays)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id (a CIFAR-10 batch has none)")


def _resolve_arrays(obj, depth: int = 0):
    """Replace the :class:`_PendingArray` placeholders in the unpickled dicts/lists by their arrays."""
    if depth > 50:
        raise ValueError("it nests containers more than 50 deep")
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise ValueError("it holds an array without data")
        return obj.array
    if isinstance(obj, (_PendingDtype, _NdarrayType)):
        raise ValueError(f"it holds a bare {type(obj).__name__.strip('_')}")
    if isinstance(obj, dict):
        return {k: _resolve_arrays(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_arrays(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve_arrays(v, depth + 1) for v in obj)
    return obj


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data uint8 (N, 3072), labels int64 (N,))`` of one CIFAR-10 python batch, read without running code.

    Raises ValueError (or ``pickle.UnpicklingError``) for anything else: 'data' must already be uint8 (never
    cast: a float or wider-integer batch is not CIFAR-10's format), 'labels' a list of integers.
    """
    with open(path, "rb") as fh:
        batch = _resolve_arrays(_CifarUnpickler(fh, encoding="bytes").load())
    if not isinstance(batch, dict):
        raise ValueError(f"it holds a {type(batch).__name__}, not a dict")
    data, lab = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = f"a numpy array of dtype {data.dtype}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise ValueError(f"'data' is {what}, not a uint8 numpy array (CIFAR-10 pixels are bytes; refusing to cast)")
    if isinstance(lab, np.ndarray):
        if lab.dtype.kind not in "iu" or lab.ndim != 1:
            raise ValueError(f"'labels' is a numpy array of dtype {lab.dtype} and shape {lab.shape}, not integers")
    elif not isinstance(lab, list) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                              for v in lab):
        raise ValueError("'labels' is not a list of integers")
    return data, np.asarray(lab, dtype=np.int64)


def _load_cifar(split, root, download) -> InMemoryImages:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    folder = _ensure_folder("cifar10", root, download, names)
    images, labels = [], []
    for n in names:
        try:
            data, lab = _read_cifar_batch(folder / n)
        except Exception as exc:
            raise ValueError(f"{folder / n} is not a CIFAR-10 python batch ({exc}); delete the folder and "
                             f"fetch it again") from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise ValueError(f"{folder / n}: data has shape {data.shape} and {len(lab)} labels; expected "
                             f"(N, 3072) uint8 and N labels")
        if lab.size and (lab.min() < 0 or lab.max() >= 10):
            raise ValueError(f"{folder / n} has labels in [{lab.min()}, {lab.max()}]; CIFAR-10 labels are 0..9")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are 1024 red, 1024 green, 1024 blue, row-major
        labels.append(lab)
    return InMemoryImages(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


# ----------------------------------------------------------------------------------------- image folders
def _load_flowers(split, root, download, size) -> ImageFiles:
    from scipy.io import loadmat

    folder = _ensure_folder("flowers102", root, download, ["jpg", "imagelabels.mat", "setid.mat"])
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    try:
        labels = _integers(loadmat(folder / "imagelabels.mat")["labels"], folder / "imagelabels.mat", "labels") - 1
        ids = _integers(loadmat(folder / "setid.mat")[key], folder / "setid.mat", key)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {folder}/imagelabels.mat ('labels') or {folder}/setid.mat ('{key}'): "
                         f"{exc}") from exc
    n_classes = DATASETS["flowers102"]["num_classes"]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{folder}/imagelabels.mat has labels in [{labels.min() + 1}, {labels.max() + 1}]; "
                         f"Flowers-102 labels are 1..{n_classes}")
    if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
        raise ValueError(f"{folder}/setid.mat '{key}' has image ids in [{ids.min()}, {ids.max()}] but "
                         f"imagelabels.mat labels {len(labels)} images (ids 1..{len(labels)})")
    n_files = sum(1 for _ in (folder / "jpg").glob("image_*.jpg"))
    if n_files != len(labels):
        raise ValueError(f"{folder}/imagelabels.mat labels {len(labels)} images but {folder / 'jpg'} holds {n_files} "
                         f"image_*.jpg files; the labels do not belong to these images (fetch the data set again)")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{folder}/setid.mat '{key}' lists an image id more than once")
    paths = [folder / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{folder}/setid.mat '{key}' lists {len(missing)} images that are not in {folder / 'jpg'} "
                         f"(first: {missing[0].name}); fetch the data set again")
    return ImageFiles(paths, labels[ids - 1], size=size)


def _integers(values, path: Path, key: str) -> np.ndarray:
    """The entries of a .mat variable as int64, refusing anything that is not a whole number."""
    values = np.asarray(values).ravel()
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(np.isfinite(values)
                                                                               & (values == np.round(values)))):
        raise ValueError(f"{path} '{key}' holds {values.dtype} values, not whole numbers")
    return values.astype(np.int64)


def _load_imagenet(root, size) -> ImageFiles:
    folder = Path(root) / DATASETS["imagenet"]["folder"]
    _refuse_partial_standin(folder)
    classes = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    paths, labels = [], []
    for c, d in enumerate(classes):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        paths += files
        labels += [c] * len(files)
    if not paths:
        why = "no images in class folders" if folder.is_dir() else "folder does not exist"
        raise FileNotFoundError(
            f"ImageNet validation images not found in {folder} ({why}). "
            f"Expected ImageFolder layout {folder}/<wnid>/<image>.JPEG, one folder per class (sorted folder "
            f"names give the label indices; use the 1000 wnids n01440764 ... to match torchvision's weights). "
            f"ImageNet needs a licence: get ILSVRC2012_img_val.tar from image-net.org and sort it into class "
            f"folders; it is never downloaded automatically.")
    return ImageFiles(paths, labels, size=size)


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
            return _load_fashion(split, root, search_dirs, download)
        return _load_cifar(split, root, download)
    size = int(image_size or info["image_size"])
    if size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size}")
    if name == "flowers102":
        return _load_flowers(split, root, download, size)
    return _load_imagenet(root, size)


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
        src = _find_fashion(root, search_dirs, download, verbose=True)
        target = Path(root) / "fashion-mnist"
        for f in _ALL_FASHION:
            read_idx(src / f)  # refuse to use or copy a corrupt file
            if src != target:
                _copy(src / f, target / f)
                print(f"fashion_mnist: copied {src / f} -> {target / f}")
        return target
    if name == "imagenet":
        n = len(_load_imagenet(root, 224))
        folder = Path(root) / DATASETS[name]["folder"]
    else:
        required = {"cifar10": ["data_batch_1", "test_batch"], "flowers102": ["jpg", "imagelabels.mat", "setid.mat"]}
        folder = _ensure_folder(name, root, download, required[name])
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
