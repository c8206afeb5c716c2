"""The two containers every loader returns: images held in memory as uint8, and image files decoded lazily."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["InMemoryImages", "ImageFiles", "IMAGE_FORMATS"]

#: the PIL decoders the image-folder sets may use: Flowers-102 ships JPEGs, ImageNet's validation set JPEGs (a few
#: of them are PNG or CMYK data behind a .JPEG name); anything else is refused before a decoder runs
IMAGE_FORMATS = ("JPEG", "PNG")


class InMemoryImages(Dataset):
    """Images held as uint8 (N, C, H, W) with int64 labels (N,); items come out as float32 in [0, 1].

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
    """

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"need uint8 images (N, C, H, W) and labels (N,), got {images.dtype} "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i].float().div_(255.0), self.labels[i]

    def tensors(self, indices=None) -> tuple[Tensor, Tensor]:
        """All items (or ``indices``) as float32 (N, C, H, W) in [0, 1] and int64 (N,)."""
        images, labels = (self.images, self.labels) if indices is None else (self.images[indices],
                                                                             self.labels[indices])
        return images.float().div_(255.0), labels.clone()


class ImageFiles(Dataset):
    """Image files decoded lazily: RGB, resize shorter side, centre crop, float32 (3, size, size) in [0, 1].

    Only the decoders of :data:`IMAGE_FORMATS` are tried (PIL's ``formats=``): a file of another format (EPS,
    which PIL would hand to Ghostscript, PSD, ...) is refused with a ValueError naming it, whatever its suffix.

    Args:
        paths: image files.
        labels: one class index per file.
        size: side of the centre crop; the shorter side is first resized to ``round(size * 256 / 224)``.
        formats: the PIL formats allowed (default :data:`IMAGE_FORMATS`).
    """

    def __init__(self, paths, labels, *, size: int = 224, formats=None):
        from torchvision import transforms

        self.paths, self.labels = [Path(p) for p in paths], torch.as_tensor(list(labels), dtype=torch.long)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"{len(self.paths)} image files but {tuple(self.labels.shape)} labels; need one per file")
        self.formats = tuple(IMAGE_FORMATS if formats is None else formats)
        self.transform = transforms.Compose([transforms.Resize(round(size * 256 / 224)),
                                             transforms.CenterCrop(size), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path, formats=self.formats) as im:
                image = self.transform(im.convert("RGB"))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise ValueError(f"{path} cannot be read as an image of the formats {', '.join(self.formats)} "
                             f"({type(exc).__name__}: {exc}); replace or delete it") from exc
        return image, self.labels[i]

