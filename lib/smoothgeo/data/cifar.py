"""CIFAR-10: reading the ``cifar-10-batches-py`` pickles with a restricted unpickler that builds only dicts, lists,
strings, numbers and plain numeric numpy arrays, so a crafted file cannot run code."""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from smoothgeo.data.containers import InMemoryImages
from smoothgeo.data.raw import ensure_folder

__all__ = ["read_cifar_batch", "load_cifar"]

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


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def load_cifar(split, folder, root, download) -> InMemoryImages:
    """The ``split`` of CIFAR-10 from its raw ``folder`` under ``root`` (fetched if missing and allowed)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    folder = ensure_folder("cifar10", folder, root, download, names)
    images, labels = [], []
    for n in names:
        try:
            data, lab = read_cifar_batch(folder / n)
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

