"""Progress bars that fit where the code runs: a terminal, JupyterLab, or a notebook executed by papermill.

Every progress bar in the library comes from :func:`tqdm` here (a drop-in for ``tqdm.auto.tqdm``). What it
shows is chosen by the environment variable ``SMOOTHGEO_PROGRESS`` (or :func:`set_mode`):

- ``auto`` (default): text bars in a terminal; in a notebook kernel, widget bars where ``ipywidgets`` is
  installed, otherwise ``quiet``. No ``TqdmWarning: IProgress not found`` either way.
- ``bar``: tqdm's text bars everywhere.
- ``widgets``: widget bars (falls back to ``quiet`` without ``ipywidgets``).
- ``quiet``: one line per finished outer bar (e.g. ``attack units: 4/4``) on stdout, nothing for inner bars
  (``leave=False``); no timings, so a re-executed notebook prints the same text.
- ``off``: nothing.

``python -m smoothgeo.pipeline.notebook run`` executes notebooks with ``quiet`` unless the variable says otherwise.
"""
from __future__ import annotations

import os
import sys

__all__ = ["MODES", "mode", "set_mode", "tqdm", "QuietBar"]

MODES = ("auto", "bar", "widgets", "quiet", "off")
ENV = "SMOOTHGEO_PROGRESS"


def set_mode(value: str) -> None:
    """Set the progress mode for this process and the processes it starts (e.g. ``set_mode("quiet")``)."""
    if value not in MODES:
        raise ValueError(f"progress mode {value!r}: choose one of {', '.join(MODES)}")
    os.environ[ENV] = value


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001 - an odd IPython state means: not a notebook
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def mode() -> str:
    """The effective mode: ``bar``, ``widgets``, ``quiet`` or ``off`` (``auto`` resolved for this process)."""
    value = (os.environ.get(ENV) or "auto").strip().lower()
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: choose one of {', '.join(MODES)}")
    if value == "auto":
        value = "widgets" if _in_notebook() else "bar"
    if value == "widgets" and not _has_widgets():
        value = "quiet"
    return value


class QuietBar:
    """A tqdm stand-in that prints one line when an outer bar (``leave=True``) closes, and nothing else."""

    def __init__(self, iterable=None, desc: str | None = None, total=None, leave: bool = True, file=None,
                 disable: bool = False, **_ignored):
        self.iterable = iterable
        self.desc = desc or ""
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.leave = leave
        self.file = file
        self.disable = disable
        self.n = 0
        self.postfix = ""
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1):
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs):
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True):
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True):
        self.desc = desc or ""

    def reset(self, total=None):
        self.n = 0
        if total is not None:
            self.total = total

    def write(self, s: str, file=None, end: str = "\n"):
        print(s, end=end, file=file or sys.stdout)

    def refresh(self, *args, **kwargs):
        pass

    def clear(self, *args, **kwargs):
        pass

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self.disable or not self.leave:
            return
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        line = f"{self.desc}: {done}" if self.desc else done
        if self.postfix:
            line += f" ({self.postfix})"
        print(line, file=self.file or sys.stdout, flush=True)


def tqdm(*args, **kwargs):
    """A progress bar for the current mode (see the module docstring); same arguments as ``tqdm.tqdm``."""
    current = mode()
    if kwargs.get("disable") or current == "off":
        from tqdm.std import tqdm as std

        kwargs["disable"] = True
        return std(*args, **kwargs)
    if current == "quiet":
        return QuietBar(*args, **kwargs)
    if current == "widgets":
        from tqdm.notebook import tqdm as widget

        return widget(*args, **kwargs)
    from tqdm.std import tqdm as std

    return std(*args, **kwargs)
