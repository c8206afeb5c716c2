"""Networks used in the paper, with input normalisation inside the model.

Every model takes images in [0, 1] (N, C, H, W) and returns logits (N, classes). Normalisation, where a
data set needs it, is the first layer (:class:`Normalize`), so noise levels and attack budgets are in pixel
units. Every non-linearity is an ``nn.ReLU`` *module* (never ``F.relu``) so that :func:`softplus_copy` can
swap it for ``nn.Softplus(beta)``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = [
    "Normalize", "FashionCNN", "ResNet20", "MLP", "resnet50_imagenet", "build_model", "softplus_copy",
    "ARCHITECTURES", "Architecture",
]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a layer, so the model's input stays in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class FashionCNN(nn.Module):
    """Chen et al. (2019)'s Fashion-MNIST network: conv5x5-32, pool, conv5x5-64, pool, fc1024, fc10.

    ``widths`` and ``hidden`` scale it: ``fashion_small`` (the default profile's network) is
    conv5x5-16, pool, conv5x5-32, pool, fc128, fc10 (215k parameters instead of 3.3M; see docs/architecture.md).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 widths: tuple[int, int] = (32, 64), hidden: int = 1024):
        super().__init__()
        c1, c2 = (int(w) for w in widths)
        flat = c2 * (image_size // 4) ** 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, int(hidden)), nn.ReLU(),
                                        nn.Linear(int(hidden), num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 images (He et al. 2016, CIFAR variant: 3 stages x 3 blocks, 16/32/64 channels)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                 blocks_per_stage: int = 3, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = [Normalize(mean, std), nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU()]
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks_per_stage):
                layers.append(_BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class MLP(nn.Module):
    """A small ReLU MLP (2-D toy problems and tests). Flattens its input."""

    def __init__(self, in_features: int = 2, hidden: tuple[int, ...] = (64, 64), num_classes: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(in_features, h), nn.ReLU()]
            in_features = h
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def resnet50_imagenet(*, pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """torchvision's ResNet-50 with ImageNet normalisation as its first layer.

    Args:
        pretrained: load torchvision's ``IMAGENET1K_V1`` weights (the paper's model). They come from
            ``weights_path`` if given, else from torch hub's cache, else are downloaded (needs network).
        weights_path: a local ``.pth`` state dict of torchvision's ResNet-50.
    Raises:
        RuntimeError: the weights are neither on disk nor downloadable; the message says where to put them.
    """
    from torchvision.models import ResNet50_Weights, resnet50

    net = resnet50(weights=None)
    if pretrained:
        try:
            if weights_path is not None:
                state = torch.load(weights_path, map_location="cpu", weights_only=True)
            else:
                state = ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # network errors come in many types
            raise RuntimeError(
                "Could not load ResNet-50 ImageNet weights: "
                f"{exc}. Either run once with network access (torchvision caches them under "
                f"{torch.hub.get_dir()}/checkpoints), or download "
                f"{ResNet50_Weights.IMAGENET1K_V1.url} yourself and pass weights_path=...") from exc
        net.load_state_dict(state)
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), net)


@dataclass(frozen=True)
class Architecture:
    """A registered network: ``build(num_classes=..., **kwargs)`` and the keyword arguments it takes from the
    data (``shape_kwargs((C, H, W))``), so the training stage needs no branch per architecture."""

    build: Callable[..., nn.Module]
    shape_kwargs: Callable[[tuple], dict]
    num_classes: int = 10


def _image_kwargs(shape) -> dict:
    return {"in_channels": int(shape[0]), "image_size": int(shape[-1])}


def _flat_kwargs(shape) -> dict:
    return {"in_features": int(math.prod(int(s) for s in shape))}


#: the one registry of networks; adding one is one entry here (and one test in tests/test_models.py)
ARCHITECTURES: dict[str, Architecture] = {
    "fashion_cnn": Architecture(FashionCNN, _image_kwargs),
    "fashion_small": Architecture(lambda **kw: FashionCNN(widths=(16, 32), hidden=128, **kw), _image_kwargs),
    "resnet20": Architecture(ResNet20, lambda shape: {"in_channels": int(shape[0])}),
    "resnet50": Architecture(lambda num_classes=1000, **kw: resnet50_imagenet(**kw),
                             lambda shape: {"pretrained": False}, num_classes=1000),
    "mlp": Architecture(MLP, _flat_kwargs, num_classes=2),
}


def build_model(arch: str, *, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a network by name: one of :data:`ARCHITECTURES` (fashion_cnn, fashion_small, resnet20, resnet50, mlp)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    entry = ARCHITECTURES[arch]
    return entry.build(num_classes=entry.num_classes if num_classes is None else num_classes, **kwargs)


def softplus_copy(model: nn.Module, beta: float) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU`` replaced by ``nn.Softplus(beta)``; same weights.

    Softplus(beta) -> ReLU as beta -> inf. Used (a) as the smooth surrogate that gives ReLU networks a non-zero
    second derivative for attribution attacks and (b) as Dombrowski et al.'s inference-time smoothing.
    """
    if beta <= 0:
        raise ValueError(f"softplus beta must be > 0, got {beta}")
    smooth = copy.deepcopy(model)
    n_relu = 0
    for parent in smooth.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus(beta=beta))
                n_relu += 1
    if n_relu == 0 and not any(isinstance(m, nn.Softplus) for m in smooth.modules()):
        import warnings
        warnings.warn("softplus_copy: the model has no nn.ReLU modules (F.relu calls cannot be replaced); "
                      "the copy is unchanged", stacklevel=2)
    return smooth
