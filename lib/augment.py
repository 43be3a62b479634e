"""Batched, on-device data augmentation for images in [0, 1] (one random draw per image)."""

from __future__ import annotations

import torch


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_affine(x: torch.Tensor, degrees: float, scale: tuple[float, float], shift: float) -> torch.Tensor:
    """Rotation (±``degrees``), scaling (``scale`` range) and translation (±``shift`` of the size: the
    crop of a padded image) in one batched resampling; empty borders are black (zero)."""
    n = x.shape[0]
    angle = torch.deg2rad((torch.rand(n, device=x.device) * 2 - 1) * degrees)
    s = torch.empty(n, device=x.device).uniform_(*scale)
    t = (torch.rand(n, 2, device=x.device) * 2 - 1) * 2 * shift  # grid units: the image spans [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def random_brightness(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Add one uniform offset in [-delta, delta] per image, then clip to [0, 1]."""
    return (x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2 - 1) * delta).clamp(0.0, 1.0)


def random_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    """Add Gaussian noise of ``std``, then clip to [0, 1]."""
    return (x + std * torch.randn_like(x)).clamp(0.0, 1.0)


class Conventional:
    """The conventional augmentation pipeline of p4 (each transform a parameter; 0 / False disables it)."""

    def __init__(
        self,
        degrees: float = 15.0,
        flip: bool = True,
        scale: tuple[float, float] = (0.9, 1.1),
        shift: float = 0.1,
        brightness: float = 0.1,
        noise_std: float = 0.02,
    ):
        self.degrees, self.flip, self.scale, self.shift, self.brightness, self.noise_std = (
            degrees,
            flip,
            tuple(scale),
            shift,
            brightness,
            noise_std,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = random_hflip(x)
        if self.degrees or self.scale != (1.0, 1.0) or self.shift:
            x = random_affine(x, self.degrees, self.scale, self.shift)
        if self.brightness:
            x = random_brightness(x, self.brightness)
        if self.noise_std:
            x = random_noise(x, self.noise_std)
        return x.clamp(0.0, 1.0)
