"""Classifier registry: ``build(name, in_shape, num_classes, **options)``.

Generators live with the method that owns them under :mod:`lib.methods`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from lib.errors import require
from lib.models.convnets import ConvPoolCNN, MnistCNN, TanhCNN
from lib.models.resnets import resnet20, torchvision_resnet

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": MnistCNN,
    "convpool_cnn": ConvPoolCNN,
    "tanh_cnn": TanhCNN,
    "resnet20": resnet20,
    "resnet18": lambda in_shape, num_classes, **kw: torchvision_resnet("resnet18", in_shape, num_classes, **kw),
    "resnet50": lambda in_shape, num_classes, **kw: torchvision_resnet("resnet50", in_shape, num_classes, **kw),
    "resnet101": lambda in_shape, num_classes, **kw: torchvision_resnet("resnet101", in_shape, num_classes, **kw),
}


def build(name: str, in_shape: tuple[int, int, int], num_classes: int, seed: int = 0, **options) -> nn.Module:
    """A freshly initialised classifier for images of ``in_shape`` (C, H, W) in [0, 1].

    The initial weights depend only on ``seed`` (not on the global RNG state), so every
    defence trained from the same seed starts from the same network.
    """
    require(name in BUILDERS, f"unknown model '{name}'; known: {', '.join(sorted(BUILDERS))}")
    require(len(in_shape) == 3 and min(in_shape) > 0, f"in_shape must be (C, H, W), got {in_shape}")
    require(num_classes >= 2, f"num_classes must be at least 2, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BUILDERS[name](tuple(in_shape), num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["build", "count_parameters", "BUILDERS"]
