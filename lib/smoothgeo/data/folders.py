"""The image-folder sets, decoded lazily: Flowers-102 (``jpg/``, ``imagelabels.mat``, ``setid.mat``) and the ImageNet
validation set (ImageFolder layout, never downloaded)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from smoothgeo.data.containers import ImageFiles
from smoothgeo.data.raw import ensure_folder, refuse_partial_standin

__all__ = ["load_flowers", "load_imagenet"]

_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def load_flowers(split, folder, root, download, size, n_classes) -> ImageFiles:
    """The ``split`` of Flowers-102 (``n_classes`` classes) from its raw ``folder`` under ``root``."""
    from scipy.io import loadmat

    folder = ensure_folder("flowers102", folder, root, download, ["jpg", "imagelabels.mat", "setid.mat"])
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    try:
        labels = _integers(loadmat(folder / "imagelabels.mat")["labels"], folder / "imagelabels.mat", "labels") - 1
        ids = _integers(loadmat(folder / "setid.mat")[key], folder / "setid.mat", key)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {folder}/imagelabels.mat ('labels') or {folder}/setid.mat ('{key}'): "
                         f"{exc}") from exc
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{folder}/imagelabels.mat has labels in [{labels.min() + 1}, {labels.max() + 1}]; "
                         f"Flowers-102 labels are 1..{n_classes}")
    if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
        raise ValueError(f"{folder}/setid.mat '{key}' has image ids in [{ids.min()}, {ids.max()}] but "
                         f"imagelabels.mat labels {len(labels)} images (ids 1..{len(labels)})")
    n_files = sum(1 for _ in (folder / "jpg").glob("image_*.jpg"))
    if n_files != len(labels):
        raise ValueError(f"{folder}/imagelabels.mat labels {len(labels)} images but {folder / 'jpg'} holds {n_files} "
                         f"image_*.jpg files; the labels do not belong to these images (fetch the data set again)")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{folder}/setid.mat '{key}' lists an image id more than once")
    paths = [folder / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{folder}/setid.mat '{key}' lists {len(missing)} images that are not in {folder / 'jpg'} "
                         f"(first: {missing[0].name}); fetch the data set again")
    return ImageFiles(paths, labels[ids - 1], size=size)


def _integers(values, path: Path, key: str) -> np.ndarray:
    """The entries of a .mat variable as int64, refusing anything that is not a whole number."""
    values = np.asarray(values).ravel()
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(np.isfinite(values)
                                                                               & (values == np.round(values)))):
        raise ValueError(f"{path} '{key}' holds {values.dtype} values, not whole numbers")
    return values.astype(np.int64)


def load_imagenet(folder, size) -> ImageFiles:
    """The ImageNet validation images in ``folder`` (one sub-folder per class, sorted names give the labels)."""
    folder = Path(folder)
    refuse_partial_standin(folder)
    classes = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    paths, labels = [], []
    for c, d in enumerate(classes):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        paths += files
        labels += [c] * len(files)
    if not paths:
        why = "no images in class folders" if folder.is_dir() else "folder does not exist"
        raise FileNotFoundError(
            f"ImageNet validation images not found in {folder} ({why}). "
            f"Expected ImageFolder layout {folder}/<wnid>/<image>.JPEG, one folder per class (sorted folder "
            f"names give the label indices; use the 1000 wnids n01440764 ... to match torchvision's weights). "
            f"ImageNet needs a licence: get ILSVRC2012_img_val.tar from image-net.org and sort it into class "
            f"folders; it is never downloaded automatically.")
    return ImageFiles(paths, labels, size=size)

