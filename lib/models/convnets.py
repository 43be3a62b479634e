"""Small plain CNNs: the ATDA/MNIST model and the PGN paper's ConvPool-CNN."""

from __future__ import annotations

import torch
import torch.nn as nn

from lib.errors import require


def _flat_size(features: nn.Module, in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *in_shape)).numel())


class MnistCNN(nn.Module):
    """Conv(64,5x5)-ReLU-Conv(64,5x5)-ReLU-Dropout(.25)-FC128-ReLU-Dropout(.5)-FC.

    The MNIST model of ATDA (Song et al. 2019; Tramer et al.'s "model A"), which p3 reuses.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 64, hidden: int = 128):
        super().__init__()
        require(width > 0 and hidden > 0, "MnistCNN width and hidden must be positive")
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], width, 5), nn.ReLU(),
            nn.Conv2d(width, width, 5), nn.ReLU(),
            nn.Dropout(0.25), nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_size(self.features, in_shape), hidden), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ConvPoolCNN(nn.Module):
    """PGN paper Table 1: conv3x3 64,128, avgpool, 128,256, avgpool, 256,512, avgpool, conv3x3 K, GAP.

    Widths are multiplied by ``width``; activations are ReLU (the paper does not say) and
    convolutions are 'same'-padded. Returns logits (softmax is in the loss).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0):
        super().__init__()
        require(width > 0, f"ConvPoolCNN width must be positive, got {width}")
        c = [max(1, int(round(w * width))) for w in (64, 128, 128, 256, 256, 512)]
        layers: list[nn.Module] = []
        prev = in_shape[0]
        for i, out in enumerate(c):
            layers += [nn.Conv2d(prev, out, 3, padding=1), nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.AvgPool2d(2))
            prev = out
        layers += [nn.Conv2d(prev, num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
