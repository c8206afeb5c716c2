"""Atomic file writing and safe loading: an interrupted run never leaves a half-written output behind.

Every writer goes to a temporary file in the destination folder and ``os.replace``s it into place.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "atomic_write_csv", "read_json",
           "load_params"]


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path, obj: Any) -> None:
    """Write ``obj`` as sorted, indented JSON (deterministic bytes for identical content)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def atomic_write_csv(path, frame, **kwargs) -> None:
    """Write a pandas DataFrame as CSV atomically (no index unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)


def read_json(path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it and re-run the stage that writes it") from exc


def load_params(path="params.yaml") -> dict:
    """Read a params.yaml (the DVC parameter file) into a dict, with a clear error if it is missing."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parameter file {path} not found; run from the repository root or pass its path")
    with open(path) as fh:
        return yaml.safe_load(fh) or {}
