"""Face expert: a face CNN trained alone on FER2013 face images, with its own 7-way head.

The CNN is EfficientNet-Lite0 adapted to 48x48 grey crops (:class:`encoders.face_lite.LiteFaceNet`), initialised
from its ImageNet weights (the ``[train]`` extra) and fine-tuned end to end with a fixed recipe: AdamW, linear
warm-up then cosine decay, label smoothing, and :class:`fusion.training.augment.FaceImageAugment`, then stochastic
weight averaging over a few more epochs at a constant learning rate. A stratified share of the training images
(``--validation-fraction``, fixed by the seed) is scored after every epoch for the record; it chooses nothing, the
averaged weights are kept. Test images (FER2013 PublicTest) are never seen by training.
A run saves its full state after every epoch and ``--resume`` continues it. The checkpoint is a safetensors file of
all weights plus a JSON config: using the expert needs neither the ImageNet weights nor their package.

Inputs are the face crops of :mod:`encoders.face_detection` (48x48 grey, FER2013's framing) as pixels in [0, 1].
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders.face_detection import FACE_SIZE
from encoders.face_lite import LiteFaceNet
from encoders.runtime import autocast, pick_device
from fusion.errors import CheckpointError, MediaError
from fusion.labels import EMOTIONS
from fusion.storage import CONFIG_FILE, WEIGHTS_FILE, load_weights, save_weights, write_atomic

VIEWS = ("single", "flip", "shifts")  # test-time views of predict_proba
# Faces per forward pass at inference, by device type. On this 2-core CPU, 1,200 views of FER2013 faces took 1.02 s
# in batches of 16, 1.30 s of 8, 1.61 s of 32 and 2.85 s of 256 (the activations of small batches stay in cache);
# the same probabilities either way. A GPU wants large batches.
PREDICT_BATCH = {"cpu": 16, "cuda": 256}
SHIFT_PIXELS = 2  # of 48: the "shifts" views move the face by this much, within the training augmentation's range


@dataclass
class FaceConfig:
    labels: tuple[str, ...] = EMOTIONS
    stem_stride: int = 1  # 1: a 48x48 crop is seen at ImageNet's 96x96 scale (see encoders.face_lite)
    dropout: float = 0.2  # before the head, as EfficientNet-Lite0 has


class FaceExpert(nn.Module):
    """(N, 1, 48, 48) grey face crops in [0, 1] -> (N, len(labels)) logits."""

    def __init__(self, config: FaceConfig | None = None):
        super().__init__()
        self.config = config or FaceConfig()
        self.backbone = LiteFaceNet(stem_stride=self.config.stem_stride)
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(self.backbone.dim, len(self.config.labels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(pixels)))

    def save(
        self, directory: str | os.PathLike, *, extra: dict | None = None, dtype: torch.dtype = torch.float32
    ) -> Path:
        """model.safetensors and config.json (the model's settings and `extra`), each written atomically. dtype
        float16 halves the file (13.6 to 6.8 MB), int8 quarters it (3.6 MB; see experts.state.save_weights) for
        shipping; loading gives float32 weights back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory / WEIGHTS_FILE, self.state_dict(), dtype=dtype)
        config = {"model": asdict(self.config), **(extra or {})}
        write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2).encode())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> FaceExpert:
        directory = Path(directory)
        try:
            config = json.loads((directory / CONFIG_FILE).read_text())["model"]
            model = cls(FaceConfig(**{**config, "labels": tuple(config["labels"])}))
            model.load_state_dict(load_weights(directory / WEIGHTS_FILE))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{directory}: not a face expert checkpoint ({error})") from error
        return model.to(device).eval()


def read_faces(paths: Sequence[str]) -> np.ndarray:
    """(N, 48, 48) uint8 grey images, resized to FACE_SIZE like the crops taken from video. MediaError names an
    unreadable file."""
    images = np.empty((len(paths), FACE_SIZE, FACE_SIZE), np.uint8)
    for i, path in enumerate(paths):
        image = cv2.imread(os.fspath(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise MediaError(path, "not a readable image")
        if image.shape != (FACE_SIZE, FACE_SIZE):
            image = cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
        images[i] = image
    return images


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1]."""
    return torch.from_numpy(images).float().div_(255.0).unsqueeze(1)


@torch.inference_mode()
def predict_proba(
    model: FaceExpert,
    images: np.ndarray,
    *,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    views: str = "flip",
    bf16: bool = False,
) -> np.ndarray:
    """(N, 48, 48) uint8 grey faces -> (N, len(model.config.labels)) probabilities, averaged over test-time views.

    views: "single" (the face as it is), "flip" (and its mirror image), "shifts" (both, each also moved by
    SHIFT_PIXELS up, down, left and right, borders reflected: 10 views). See VIEWS.
    batch_size: faces per forward pass (default PREDICT_BATCH for the device type).
    """
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    device = pick_device(device)
    batch_size = batch_size or PREDICT_BATCH.get(device.type, PREDICT_BATCH["cuda"])
    model.eval().to(device, memory_format=torch.channels_last)
    rows = []
    for first in range(0, len(images), batch_size):
        batch = _pixels(images[first : first + batch_size]).to(device, memory_format=torch.channels_last)
        with autocast(device, cpu_bf16=bf16):
            seen = [model(view).float().softmax(-1) for view in _views(batch, views)]
        rows.append(torch.stack(seen).mean(0).cpu())
    return torch.cat(rows).numpy()


def _views(batch: torch.Tensor, views: str) -> list[torch.Tensor]:
    """The test-time views of a (B, 1, H, W) batch."""
    if views == "single":
        return [batch]
    faces = [batch, batch.flip(-1)]
    if views == "flip":
        return faces
    s = SHIFT_PIXELS
    out = []
    for face in faces:
        padded = F.pad(face, (s, s, s, s), mode="reflect")
        height, width = face.shape[-2:]
        for dy, dx in ((s, s), (0, s), (2 * s, s), (s, 0), (s, 2 * s)):  # centre, up, down, left, right
            out.append(padded[..., dy : dy + height, dx : dx + width].contiguous(memory_format=torch.channels_last))
    return out
