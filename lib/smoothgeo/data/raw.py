"""Raw data folders: when a download may be tried, the stand-in markers, and fetching a missing folder via torchvision.

The data-set modules (:mod:`smoothgeo.data.fashion`, :mod:`smoothgeo.data.cifar`, :mod:`smoothgeo.data.folders`)
and :mod:`smoothgeo.data.standins` build on this module; it imports none of them.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["STANDIN_MARKER", "STANDIN_INCOMPLETE", "refuse_partial_standin", "may_download", "ensure_folder"]

#: the file that marks a folder as a synthetic stand-in (:mod:`smoothgeo.data.standins`); while the stand-in is being
#: written it starts with :data:`STANDIN_INCOMPLETE`, and such a folder is refused by every loader
STANDIN_MARKER = "STANDIN"
STANDIN_INCOMPLETE = "INCOMPLETE"


def refuse_partial_standin(folder: Path) -> None:
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


def may_download(download) -> bool:
    if download is None:
        return os.environ.get("SMOOTHGEO_OFFLINE", "").strip().lower() in ("", "0", "false", "no")
    return bool(download)


def _torchvision_download(name: str, root) -> None:
    """Fetch ``name`` with torchvision into ``root`` (tests replace this to forbid the network)."""
    from torchvision import datasets

    if name == "cifar10":
        datasets.CIFAR10(str(root), train=True, download=True)
    elif name == "flowers102":
        datasets.Flowers102(str(root), split="train", download=True)


def ensure_folder(name: str, folder: Path, root, download, required) -> Path:
    """``folder`` (the raw folder of ``name`` under ``root``) once it holds ``required``; fetched via torchvision if
    allowed, else FileNotFoundError saying how to get it."""
    folder = Path(folder)
    refuse_partial_standin(folder)
    missing = [r for r in required if not (folder / r).exists()]
    if not missing:
        return folder
    how = f"`python -m smoothgeo.data.datasets prepare {name} --root {root}` with network access"
    if may_download(download):
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
