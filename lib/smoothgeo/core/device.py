"""Where tensors run: the one device resolver, and the CPU features that decide the training precision.

* :func:`resolve_device` turns a params.yaml ``device`` string into a ``torch.device`` (every stage, notebook and
  benchmark uses it; nothing else in the package names a device).
* :func:`cpu_features` reads the CPU flags that matter for bfloat16 (``avx512_bf16``, ``amx_bf16``) from
  ``/proc/cpuinfo`` (Linux; elsewhere none are assumed), and :func:`autocast_dtype` turns a ``precision``
  setting (``float32``, ``bfloat16`` or ``auto``) into the dtype to autocast to on a device: ``auto`` takes
  bfloat16 only on a CPU with native bf16 instructions (or a CUDA device that supports it) and float32
  everywhere else, so a machine without them falls back instead of emulating bf16 slowly.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

__all__ = ["resolve_device", "cpu_features", "autocast_dtype", "set_threads", "PRECISIONS"]

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
PRECISIONS = ("float32", "bfloat16", "auto")


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` (or None): the first CUDA device when there is one, else the CPU; otherwise ``torch.device(device)``.

    Raises:
        ValueError: not one of auto, cpu, cuda, cuda:N, mps, or a device that is not available here.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"device {device!r} is not valid; use auto, cpu, cuda, cuda:N or mps")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but MPS is not available here; use auto or cpu")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The bf16-relevant flags of this CPU (``avx512_bf16``, ``amx_bf16``, ``amx_tile``); empty if unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return frozenset(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def autocast_dtype(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype to autocast to for ``precision`` on ``device`` (float32 means: no autocast).

    ``bfloat16`` is taken as asked (slow where the hardware emulates it); ``auto`` takes it only where the
    hardware has it natively (CPU: avx512_bf16 or amx_bf16; CUDA: ``torch.cuda.is_bf16_supported()``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not valid; allowed: {', '.join(PRECISIONS)}")
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_features() & {"avx512_bf16", "amx_bf16"}:
        return torch.bfloat16
    return torch.float32


def set_threads(threads) -> int:
    """Set torch's intra-op threads from params.yaml's ``threads`` (None: leave torch's default); returns the count.

    The stages pin it because results depend on it in the last bits (float sums in another order), so a stage
    run alone, in a lane beside another (``python -m smoothgeo.pipeline.lanes``) or on another day gives the same
    bytes for the same ``threads``.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"params 'threads' must be null or an integer >= 1, got {threads!r}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()
