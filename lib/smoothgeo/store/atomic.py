"""Atomic file writing and safe loading: an interrupted run never leaves a half-written output behind.

Every writer goes to a temporary file in the destination folder and ``os.replace``s it into place. Temporary
files are named ``.<name>.<pid>.<random>`` + :data:`TEMP_SUFFIX` (``.smoothgeo-tmp``), so ``.dvcignore`` can
exclude them (pattern ``*.smoothgeo-tmp``) and a later run can recognise and remove one left behind by a
killed process (:func:`remove_stale_temps`; :func:`atomic_path` does it for its own destination). Files are
created with the ordinary permissions (``0o666`` minus the umask, e.g. 0644), not mkstemp's 0600.
"""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_csv",
           "read_json", "load_params", "remove_stale_temps", "TEMP_SUFFIX", "ConfigError"]

#: Suffix of every temporary file written by :func:`atomic_path` (``.dvcignore`` pattern ``*.smoothgeo-tmp``).
TEMP_SUFFIX = ".smoothgeo-tmp"


class ConfigError(ValueError):
    """A parameter file is not valid YAML or not a mapping (a ValueError, so CLIs report it in one line)."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder, name: str | None = None) -> list[Path]:
    """Remove temporary files of :func:`atomic_path` in ``folder`` whose writing process no longer runs.

    Args:
        folder: the folder to clean (missing: nothing to do).
        name: only temporaries of destination file ``name`` (default: all of them).
    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    pattern = f".{name}.*{TEMP_SUFFIX}" if name is not None else f".*{TEMP_SUFFIX}"
    for tmp in folder.glob(pattern):
        parts = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
        try:
            pid = int(parts[-2])
        except (ValueError, IndexError):
            continue
        if _pid_alive(pid) and pid != os.getpid():
            continue  # another process may still be writing it
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temporary file exists (empty, mode 0666 minus the umask) when the block starts; writers may reopen it.
    Temporaries of ``path`` left by killed processes are removed first. The data is flushed to disk before
    the rename, so after a crash ``path`` holds either the old or the new content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


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


def _unique_key_loader():
    """A ``yaml.SafeLoader`` that refuses a mapping with the same key twice (PyYAML keeps the last one silently).

    Keys brought in by a merge (``<<: *anchor``) may be overridden, as YAML's merge key intends.
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node)
                    except TypeError:
                        continue  # an unhashable key: the constructor reports it
                    if first is not key_node:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found duplicate key {key!r} (first at line {first.start_mark.line + 1}); each key "
                            f"may appear once", key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_params(path="params.yaml", *, check_names: bool = True) -> dict:
    """Read a params.yaml (the DVC parameter file) into a dict.

    A key given twice in one mapping is refused (PyYAML would keep the later one silently), and every model,
    run, setting and profile name is checked against the name rule of :mod:`smoothgeo.store.names` (names become
    file names and parts of DVC's shell commands); ``check_names=False`` skips the latter.

    Raises:
        FileNotFoundError: the file is missing.
        ConfigError (a ValueError): the file is not valid YAML (line and column named), repeats a key (named,
            with both lines), is not a mapping, or gives a name that breaks the name rule (its key named).
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parameter file {path} not found; run from the repository root or pass its path")
    try:
        with open(path) as fh:
            params = yaml.load(fh, Loader=_unique_key_loader())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"parameter file {path} is not valid YAML{at}: {what}; fix the file") from None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"parameter file {path} must hold a mapping (key: value lines), got "
                          f"{type(params).__name__}")
    if check_names:
        from smoothgeo.store.names import check_param_names

        try:
            check_param_names(params)
        except ValueError as exc:
            raise ConfigError(f"parameter file {path}: {exc}") from None
    return params
