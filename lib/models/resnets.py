"""ResNet-20 (CIFAR variant) and torchvision's ResNet18/50/101 adapted to small inputs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """He et al.'s option A: subsample and zero-pad channels (parameter-free)."""
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al. (2016) CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels (~0.27M params)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 16, blocks: int = 3):
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(_BasicBlock(cin, w, 2 if (i > 0 and b == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet20(in_shape: tuple[int, int, int], num_classes: int, **kw) -> nn.Module:
    """ResNet-20 for ``in_shape`` images."""
    return ResNet20(in_shape, num_classes, **kw)


def torchvision_resnet(
    arch: str, in_shape: tuple[int, int, int], num_classes: int, small_input_stem: bool = True
) -> nn.Module:
    """torchvision's ``arch`` (untrained) for small images.

    ``small_input_stem=True`` replaces the 7x7/2 stem and max-pool by a 3x3/1 convolution (the
    usual CIFAR adaptation); ``False`` keeps the ImageNet stem (4x cheaper, coarser features).
    The first convolution takes ``in_shape[0]`` channels (1 for MNIST, 3 for colour).
    """
    net = getattr(tvm, arch)(weights=None, num_classes=num_classes)
    if small_input_stem:
        net.conv1 = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    else:
        net.conv1 = nn.Conv2d(in_shape[0], 64, 7, 2, 3, bias=False)
    return net
