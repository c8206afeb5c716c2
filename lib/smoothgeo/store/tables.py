"""Tidy results tables on disk: ``results/attacks/<model>.csv.gz`` and the rows kept in the attack partials.

* :func:`write_table`: a frame as gzip'd CSV, atomically (:mod:`smoothgeo.store.atomic`), with identical bytes for
  identical content: gzip mtime 0 and no file name in the header (pandas would store the random temporary name).
* :func:`read_table`: such a file back, with the dtypes of :data:`smoothgeo.core.evaluation.DTYPES` (nullable ints
  / bools where a diagnostic is unknown) and the columns :data:`smoothgeo.core.evaluation.COLUMNS` in order.
* :func:`table_text` / :func:`read_table_text`: the same CSV as a string (the attack stage keeps each finished
  setting's rows in its partial file this way).

pandas >= 3 writes and parses floats round-trip exactly, so a table read back equals the frame written.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd

from smoothgeo.core.evaluation import as_table
from smoothgeo.store.atomic import atomic_write_bytes

__all__ = ["read_table", "write_table", "table_text", "read_table_text"]

_TEXT_COLUMNS = {"model": str, "setting": str}  # names such as "1e-3" or "nan" stay strings


def table_text(frame: pd.DataFrame) -> str:
    """``frame`` as CSV text (no index)."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def read_table_text(text: str) -> pd.DataFrame:
    """A results table from the CSV text of :func:`table_text`, with the results schema."""
    return as_table(pd.read_csv(io.StringIO(text), dtype=_TEXT_COLUMNS))


def write_table(path, frame: pd.DataFrame) -> None:
    """Write ``frame`` to ``path`` as deterministic gzip'd CSV, atomically."""
    atomic_write_bytes(Path(path), gzip.compress(table_text(frame).encode(), mtime=0))


def read_table(path) -> pd.DataFrame:
    """Read a results table (``results/attacks/<model>.csv.gz``) with the results schema."""
    return as_table(pd.read_csv(Path(path), dtype=_TEXT_COLUMNS))
