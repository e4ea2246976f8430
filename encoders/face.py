"""The face path's second half: a CNN that embeds FER2013-style face crops (see :mod:`encoders.face_detection`)."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from einops.layers.torch import Reduce
from torch import nn

from encoders.face_detection import FACE_SIZE

PIXEL_MEAN = 0.51  # FER2013 grey level mean in [0, 1] (measured on 3,000 training images)
PIXEL_STD = 0.31  # FER2013 grey level standard deviation in [0, 1]


def face_pixels(crops: np.ndarray) -> torch.Tensor:
    """(n, FACE_SIZE, FACE_SIZE) uint8 grey crops -> (n, 1, FACE_SIZE, FACE_SIZE) float32 in [0, 1] for FaceCNN."""
    if crops.ndim != 3 or crops.shape[1:] != (FACE_SIZE, FACE_SIZE) or crops.dtype != np.uint8:
        raise ValueError(f"expected (n, {FACE_SIZE}, {FACE_SIZE}) uint8 crops, got {crops.shape} {crops.dtype}")
    pixels = torch.from_numpy(np.ascontiguousarray(crops)).float() / 255.0
    return rearrange(pixels, "n h w -> n 1 h w")


def _stage(channels_in: int, channels_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU, then a 2x2 max-pool: (N, C_in, H, W) -> (N, C_out, H / 2, W / 2)."""
    layers: list[nn.Module] = []
    for c_in in (channels_in, channels_out):
        # no conv bias: the BatchNorm right after has its own shift
        layers += [nn.Conv2d(c_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class FaceCNN(nn.Module):
    """Face expression CNN over FER2013-style crops: (N, 1, 48, 48) float in [0, 1] -> (N, dim) embeddings.

    VGG-style: four stages of widths 32, 64, 128, 256 take 48 -> 24 -> 12 -> 6 -> 3 pixels, then global average
    pooling, dropout and a linear projection to ``dim``. About 1.2M parameters at dim=256.
    """

    def __init__(self, *, dim: int = 256, dropout: float = 0.3):
        super().__init__()
        self.dim = dim
        widths = (1, 32, 64, 128, 256)
        self.stages = nn.Sequential(*(_stage(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:])))
        self.head = nn.Sequential(Reduce("n c h w -> n c", "mean"), nn.Dropout(dropout), nn.Linear(widths[-1], dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 1, FACE_SIZE, FACE_SIZE) float in [0, 1] -> (N, dim)."""
        # normalised here so every caller (training on FER2013, inference on video crops) passes plain pixels
        return self.head(self.stages((pixels - PIXEL_MEAN) / PIXEL_STD))
