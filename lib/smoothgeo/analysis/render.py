"""Tables and figures out of tidy result files: CSV + Markdown + LaTeX tables, PNG + PDF figures.

Figures are saved without embedded dates or software versions so re-running a notebook on the same
numbers gives the same bytes; tables are always computed from a tidy DataFrame, never typed.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd

from smoothgeo.store.atomic import atomic_path, atomic_write_csv, atomic_write_text, load_params

__all__ = ["repo_root", "results_dir", "save_table", "save_figure", "save_headline", "plot_groups", "notebook_params",
           "display_path", "scrub_paths", "find_machine_paths", "save_metrics", "save_plot_data"]


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


def _round(value, digits: int):
    if isinstance(value, dict):
        return {str(k): _round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float):
        return None if value != value else round(value, digits)
    return value


def save_headline(folder: Path, *, title: str, answer: str, table: str | None = None, figure: str | None = None,
                  order: int = 100, more_figures: tuple = ()) -> None:
    """Declare a notebook's headline: its title, the answer paragraph (formatted from its tables, never typed),
    and the names of its headline table (``<name>.md``) and figure (``<name>.png``) in ``folder``, and
    ``more_figures`` shown after it. The report stage puts every declared headline into results/SUMMARY.md and the
    README, in ``order``."""
    from smoothgeo.store.atomic import atomic_write_json

    atomic_write_json(Path(folder) / "headline.json", {"title": title, "answer": answer, "order": int(order),
                                                      "table": None if table is None else f"{table}.md",
                                                      "figure": None if figure is None else f"{figure}.png",
                                                      "more_figures": [f"{f}.png" for f in more_figures]})


def plot_groups(ax, units: pd.DataFrame, summary: pd.DataFrame, value: str, *, by: str, order, label: str = "",
                colors=None) -> None:
    """One column per group on ``ax``: a dot per unit (``units[value]``, e.g. one model per seed) and the group's
    mean with its 95 % interval (``summary``, from :func:`smoothgeo.analysis.seed_level.group_means`) as a bar."""
    import numpy as np

    order = list(order)
    for i, g in enumerate(order):
        vals = units.loc[units[by] == g, value].to_numpy(float)
        color = (colors or {}).get(g, f"C{i % 10}")
        ax.scatter(i + np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.full(len(vals), i), vals,
                   s=18, color=color, alpha=0.7, zorder=3)
        row = summary[(summary[by] == g) & (summary.metric == value)]
        if len(row) and np.isfinite(row["mean"].iloc[0]):
            m, lo, hi = (float(row[c].iloc[0]) for c in ("mean", "ci_low", "ci_high"))
            yerr = None if not (np.isfinite(lo) and np.isfinite(hi)) else [[m - lo], [hi - m]]
            ax.errorbar([i + 0.28], [m], yerr=yerr, fmt="D", color="k", capsize=4, ms=4, zorder=4)
    ax.set_xticks(range(len(order)), order, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(order) - 0.4)
    if label:
        ax.set_ylabel(label, fontsize=8)


def save_metrics(path, metrics: dict, *, digits: int = 4) -> None:
    """Write DVC metrics: nested JSON (``dvc metrics show`` flattens it to ``accuracy.natural-s0`` etc.), floats
    rounded to ``digits`` so that `dvc metrics diff` shows real changes, NaN as null, keys in the given order."""
    import json

    atomic_write_text(Path(path), json.dumps(_round(metrics, digits), indent=2) + "\n")


def save_plot_data(frame: pd.DataFrame, path, *, digits: int = 6) -> None:
    """Write one DVC plot's data as CSV (one row per point; columns named as in dvc.yaml's ``x``/``y``)."""
    atomic_write_csv(Path(path), frame.round(digits), index=False)


# --- paths in printed output ---------------------------------------------------------------------------------
# Committed outputs (tables, executed notebooks) must not name folders of the machine that made them.

_GENERIC = re.compile(r"(?<![\w.~<>/+-])/(?:root|tmp|work|home|Users|mnt|private|var/folders)(?=[/\s\"',:;)\]]|$)"
                      r"[^\s\"',:;)\]]*")


def _prefixes(root: Path | None) -> list[tuple[str, str]]:
    """(absolute prefix, replacement) pairs, longest prefix first."""
    pairs = []
    if root is not None:
        for r in {str(root), str(Path(root).resolve())}:
            pairs.append((r, "."))
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        pairs.append((prefix, "<python>"))
    pairs.append((str(Path(tempfile.gettempdir()).resolve()), "<tmp>"))
    pairs.append((tempfile.gettempdir(), "<tmp>"))
    home = os.path.expanduser("~")
    if home not in ("/", "~"):
        pairs.append((home, "~"))
    pairs = [(a.rstrip("/"), b) for a, b in pairs if a and a != "/"]
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def _prefix_re(prefix: str) -> re.Pattern:
    """``prefix`` as a whole path (not inside a longer name, nor inside base64 data), with its next ``/``."""
    return re.compile(r"(?<![\w.~<>/+-])" + re.escape(prefix) + r"(/|(?![\w.+-]))")


def _replace(match: re.Match, replacement: str) -> str:
    if replacement == ".":
        return "" if match.group(1) == "/" else "."
    return replacement + match.group(1)


def _root_or_none(root) -> Path | None:
    if root is not None:
        return Path(root)
    try:
        return repo_root()
    except FileNotFoundError:
        return None


def display_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` as it should be printed: relative to the repository root when inside it (``results/x.csv``),
    otherwise with the machine's own folders abbreviated (``<python>/...``, ``<tmp>/...``, ``~/...``)."""
    base = _root_or_none(root)
    p = Path(path)
    if base is not None and p.is_absolute():
        for candidate in (p, p.resolve()):
            for b in (base, base.resolve()):
                try:
                    rel = candidate.relative_to(b)
                except ValueError:
                    continue
                return rel.as_posix() or "."
    return scrub_paths(str(p), base)


def scrub_paths(text: str, root: str | os.PathLike | None = None) -> str:
    """Replace the repository root (by ``.``), the Python installation (``<python>``), the temporary folder
    (``<tmp>``) and the home folder (``~``) in ``text``; what is left for :func:`find_machine_paths` to flag
    are other absolute paths."""
    for prefix, replacement in _prefixes(_root_or_none(root)):
        if prefix in text:
            text = _prefix_re(prefix).sub(lambda m: _replace(m, replacement), text)
    return text


def find_machine_paths(text: str, root: str | os.PathLike | None = None) -> list[str]:
    """The absolute paths of this machine found in ``text``: the repository root, the Python installation, the
    temporary and home folders, and anything under /root, /tmp, /work, /home, /Users, /mnt (empty: clean)."""
    found = [prefix for prefix, _ in _prefixes(_root_or_none(root)) if _prefix_re(prefix).search(text)]
    found += _GENERIC.findall(text)
    return sorted(set(found))
