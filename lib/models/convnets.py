"""Small plain CNNs: the ATDA/MNIST model, the Torch7 MNIST demo net (p5) and the PGN ConvPool-CNN."""

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
            nn.Conv2d(in_shape[0], width, 5),
            nn.ReLU(),
            nn.Conv2d(width, width, 5),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_size(self.features, in_shape), hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
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


class TanhCNN(nn.Module):
    """Conv(32,5x5)-tanh-MaxPool(3)-Conv(64,5x5)-tanh-MaxPool(2)-FC200-tanh-FC, inputs padded to 32x32.

    The Torch7 MNIST demo network that Xia & Liu's code (fxia22/advGAN) trains as D. As there, the
    raw image is padded with black to 32x32 first and then standardised globally (``mean``,
    ``std``) inside the model, so the model, like every attack here, takes images in [0, 1].
    """

    def __init__(
        self, in_shape: tuple[int, int, int], num_classes: int, size: int = 32, mean: float = 0.0, std: float = 1.0
    ):
        super().__init__()
        require(size >= max(in_shape[1:]), f"TanhCNN pads inputs to {size}, smaller than {in_shape[1:]}")
        require(std > 0, f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        h, w = in_shape[1:]
        self.pad = nn.ZeroPad2d(
            ((size - w) // 2, size - w - (size - w) // 2, (size - h) // 2, size - h - (size - h) // 2)
        )
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], 32, 5),
            nn.Tanh(),
            nn.MaxPool2d(3, 3, padding=1),
            nn.Conv2d(32, 64, 5),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = _flat_size(self.features, (in_shape[0], size, size))
        self.classifier = nn.Sequential(nn.Linear(flat, 200), nn.Tanh(), nn.Linear(200, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((self.pad(x) - self.mean) / self.std))
