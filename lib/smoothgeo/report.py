"""Tables and figures out of tidy result files: CSV + Markdown + LaTeX tables, PNG + PDF figures.

Figures are saved without embedded dates or software versions so re-running a notebook on the same
numbers gives the same bytes; tables are always computed from a tidy DataFrame, never typed.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .io import atomic_path, atomic_write_csv, atomic_write_text, load_params

__all__ = ["repo_root", "results_dir", "save_table", "save_figure", "notebook_params", "pick_device"]


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root: the first folder upwards from ``start`` (default: cwd) holding ``dvc.yaml``.

    Notebooks run with their own folder as cwd in JupyterLab and with the repository root under DVC;
    resolving paths from here makes both work.
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    raise FileNotFoundError(f"no dvc.yaml in {here} or its parents: run from inside the repository")


def results_dir(name: str, root: Path | None = None) -> Path:
    out = (root or repo_root()) / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def notebook_params(section: str | None = None, root: Path | None = None) -> dict:
    """``params.yaml`` (or one section of it), for notebooks opened interactively without papermill."""
    params = load_params((root or repo_root()) / "params.yaml")
    return params if section is None else params[section]


def pick_device(name: str = "auto"):
    """``"auto"`` -> the first CUDA device if there is one, else CPU; anything else is passed to torch."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def save_table(frame: pd.DataFrame, folder: Path, name: str, *, floatfmt: str = ".3f", caption: str = "") -> None:
    """Write ``name``.csv (full precision), ``name``.md and ``name``.tex (rounded) into ``folder``."""
    folder = Path(folder)
    atomic_write_csv(folder / f"{name}.csv", frame)
    atomic_write_text(folder / f"{name}.md", frame.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    digits = int(floatfmt.strip(".f") or 3)
    latex = frame.to_latex(index=False, float_format=lambda v: f"{v:.{digits}f}", caption=caption or None,
                           label=f"tab:{name}" if caption else None)
    atomic_write_text(folder / f"{name}.tex", latex)


def save_figure(fig, folder: Path, name: str, *, dpi: int = 120) -> None:
    """Save ``fig`` as ``name``.png and ``name``.pdf with no date or version metadata (deterministic)."""
    folder = Path(folder)
    with atomic_path(folder / f"{name}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    with atomic_path(folder / f"{name}.pdf") as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight",
                    metadata={"Creator": None, "Producer": None, "CreationDate": None})
