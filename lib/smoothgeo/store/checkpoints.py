"""Model checkpoints and resumable training state, written atomically and loaded safely.

A checkpoint is a dict ``{"format", "arch", "num_classes", "model_kwargs", "state_dict", "meta"}`` saved with
``torch.save``; it holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
A *partial* (``NAME.partial.pt``) additionally holds the optimizer state, the epoch count, the training history,
the RNG state and the configuration it was trained with, so an interrupted run can continue.

Every failure to load names the file and says what to do (re-create it with ``dvc repro`` / the training CLI,
or delete it).

Integrity: every file (format 2) carries ``"sha256"``, a digest of its whole content (every tensor's dtype,
shape and bytes, and every plain value, walked in sorted key order; :func:`content_digest`), verified at load;
a mismatch (bit flips, a file edited after writing) raises :class:`CheckpointError`, and so does a file without a
digest (format 1, written by an older smoothgeo, or one whose digest was removed): its content cannot be checked,
so it is refused with how to re-create it, never loaded with a warning.

Model keyword arguments: the ``model_kwargs`` of a checkpoint are checked against the keyword parameters of its
architecture's constructor (:func:`allowed_model_kwargs`) and must be plain values (numbers, strings, bools, None
and lists/tuples of them) before the network is built, so a file cannot pass arbitrary arguments (a
``weights_path`` to another file, a download) to a constructor.

Determinism: the archive is written to memory first under a fixed in-archive name (``torch.save`` to a file
records the file's name, so the random temporary name made identical weights give different bytes), then
written atomically; the same content gives the same bytes.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import os
from pathlib import Path

import torch
from torch import nn

from smoothgeo.store.atomic import atomic_write_bytes
from smoothgeo.core.models import ARCHITECTURES, build_model

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "save_partial", "load_partial",
           "rng_state", "set_rng_state", "CheckpointError", "FORMAT", "content_digest", "checkpoint_bytes",
           "allowed_model_kwargs", "check_model_kwargs"]

FORMAT = 2
_READABLE_FORMATS = (1, 2)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model it claims to hold."""


def _remedy(path: Path) -> str:
    name = path.name.removesuffix(".partial.pt").removesuffix(".pt")
    return (f"delete {path} and re-create it with `dvc repro` (the training stage that writes it) or "
            f"`python -m smoothgeo.pipeline.train --name {name}`")


def _update(h, obj) -> None:
    """Feed ``obj`` (tensors, dicts, lists, tuples, str, numbers, bools, None) into hash ``h`` canonically."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(f"K{key!r}".encode())
            _update(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for item in obj:
            _update(h, item)
    elif obj is None or isinstance(obj, (str, bytes, bool, int, float)):
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())
    else:
        raise TypeError(f"a checkpoint may hold only tensors and plain values, got {type(obj).__name__}")


def content_digest(obj: dict) -> str:
    """sha256 (hex) of a checkpoint dict's content, its own ``"sha256"`` entry left out."""
    h = hashlib.sha256()
    _update(h, {k: v for k, v in obj.items() if k != "sha256"})
    return h.hexdigest()


def checkpoint_bytes(obj: dict) -> bytes:
    """The bytes of ``torch.save(obj)`` with the fixed in-archive name (same content -> same bytes)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _save(path, obj) -> None:
    obj = {**obj, "sha256": content_digest(obj)}
    atomic_write_bytes(path, checkpoint_bytes(obj))


def read_checkpoint(path, *, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` of a smoothgeo checkpoint dict, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; create it with `dvc repro` (the training stage that "
                              f"writes it) or `python -m smoothgeo.pipeline.train --name "
                              f"{path.name.removesuffix('.partial.pt').removesuffix('.pt')}`")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, unpickling refusals ... come in many types
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated and cannot be read "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              f"{_remedy(path)}") from exc
    if not isinstance(obj, dict) or obj.get("format") not in _READABLE_FORMATS or "state_dict" not in obj:
        raise CheckpointError(f"{path} is not a smoothgeo checkpoint (format {FORMAT}: a dict with 'state_dict', "
                              f"'arch', 'meta'); {_remedy(path)}")
    recorded = obj.get("sha256")
    if recorded is None:
        if obj.get("format", 0) >= 2:
            raise CheckpointError(f"checkpoint {path} has lost its sha256 entry, so its integrity cannot be "
                                  f"checked; {_remedy(path)}")
        raise CheckpointError(f"checkpoint {path} was written by an older smoothgeo (format 1) without a sha256 "
                              f"digest, so its integrity cannot be checked and it is not loaded; {_remedy(path)} "
                              f"(the new file carries a digest)")
    try:
        actual = content_digest(obj)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path} holds unexpected content ({exc}); {_remedy(path)}") from exc
    if actual != recorded:
        raise CheckpointError(f"checkpoint {path} failed its integrity check: the sha256 of its content is "
                              f"{actual[:16]}..., the file records {str(recorded)[:16]}... (the file was changed "
                              f"or corrupted after it was written); {_remedy(path)}")
    return obj


def save_checkpoint(path, model: nn.Module, *, arch: str, num_classes: int, meta: dict | None = None,
                    model_kwargs: dict | None = None) -> None:
    """Atomically write ``model``'s weights (moved to the CPU) and how to rebuild it.

    Args:
        path: destination ``.pt`` file (folders are created).
        arch, num_classes, model_kwargs: rebuild the network with
            ``smoothgeo.core.models.build_model(arch, num_classes=num_classes, **model_kwargs)``.
        meta: plain data (str, numbers, bools, None, lists, dicts) describing the run: recipe, hyperparameters...
    """
    obj = {"format": FORMAT, "arch": str(arch), "num_classes": int(num_classes),
           "model_kwargs": dict(model_kwargs or {}), "meta": dict(meta or {}),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    _save(path, obj)


def load_checkpoint(path, *, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(model in eval mode on device, meta)``; ``meta`` also carries ``arch``, ``num_classes`` and
        ``model_kwargs``.
    Raises:
        CheckpointError: the file is missing, corrupted/truncated, not a smoothgeo checkpoint, or its weights do
            not fit its architecture; the message names the file and what to do.
    """
    path = Path(path)
    obj = read_checkpoint(path)
    if obj.get("kind") == "partial" or "arch" not in obj:
        raise CheckpointError(f"{path} is a partial training state, not a finished checkpoint; finish the run with "
                              f"`python -m smoothgeo.pipeline.train --name ...` (it resumes) or `dvc repro`")
    try:
        kwargs = check_model_kwargs(obj["arch"], obj.get("model_kwargs", {}))
        model = build_model(obj["arch"], num_classes=obj["num_classes"], **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} names an architecture that cannot be built ({exc}); "
                              f"{_remedy(path)}") from exc
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: the weights do not fit architecture {obj['arch']!r} "
                              f"({str(exc).splitlines()[0]} ...); {_remedy(path)}") from exc
    meta = {**obj.get("meta", {}), "arch": obj["arch"], "num_classes": obj["num_classes"],
            "model_kwargs": obj.get("model_kwargs", {})}
    return model.to(device).eval(), meta


_PLAIN = (bool, int, float, str, type(None))


def allowed_model_kwargs(arch: str) -> set[str]:
    """The keyword arguments the constructor of architecture ``arch`` takes, ``num_classes`` aside.

    A registry entry that forwards ``**kwargs`` (e.g. ``fashion_small``: ``lambda **kw: FashionCNN(..., **kw)``)
    takes the named parameters of the callables it forwards to (the globals its code names).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    names: set[str] = set()
    todo, seen = [ARCHITECTURES[arch].build], set()
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.add(p.name)
            elif p.kind == p.VAR_KEYWORD:  # follow what the code forwards its **kwargs to
                code, env = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
                todo += [env[n] for n in (code.co_names if code is not None else ()) if callable(env.get(n))]
    return names - {"num_classes"}


def check_model_kwargs(arch: str, kwargs) -> dict:
    """``kwargs`` (a checkpoint's ``model_kwargs``) if every key is a keyword of ``arch``'s constructor and every
    value a plain value (number, string, bool, None, or a list/tuple of them); ``ValueError`` naming the key."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"model_kwargs is a {type(kwargs).__name__}, not a mapping")
    allowed = allowed_model_kwargs(arch)
    for key, value in kwargs.items():
        if key not in allowed:
            raise ValueError(f"model_kwargs has {key!r}, which architecture {arch!r} does not take (it takes "
                             f"{sorted(allowed)})")
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, _PLAIN) for v in items):
            raise ValueError(f"model_kwargs {key!r} holds {type(value).__name__} {str(value)[:60]}; only numbers, "
                             f"strings, bools, None and lists of them are allowed")
    if kwargs.get("weights_path") is not None or kwargs.get("pretrained"):
        raise ValueError("model_kwargs asks for pretrained weights ('pretrained'/'weights_path'); a checkpoint holds "
                         "its own weights and never loads or downloads others")
    return dict(kwargs)


def rng_state() -> dict:
    """The global torch RNG state (CPU and every visible CUDA device)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (the CUDA part only where the same number of devices is visible)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def save_partial(path, *, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, config: dict,
                 history: list | None = None) -> None:
    """Atomically write the training state after ``epoch`` finished epochs (model, optimizer, RNG, history)."""
    obj = {"format": FORMAT, "kind": "partial", "epoch": int(epoch), "config": config,
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "optimizer": optimizer.state_dict(), "rng": rng_state(), "history": list(history or [])}
    _save(path, obj)


def load_partial(path, *, map_location="cpu") -> dict | None:
    """The partial training state at ``path``, or None when there is none.

    An unreadable partial (a crash while writing cannot cause one: writes are atomic) raises
    :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not os.path.exists(path):
        return None
    obj = read_checkpoint(path, map_location=map_location)
    if obj.get("kind") != "partial":
        raise CheckpointError(f"{path} is not a partial training state; {_remedy(path)}")
    return obj
