"""Training the fusion model (with its spectrogram and face CNNs) on extracted features.

Whisper and BERT stay frozen: their outputs are features. Examples with missing modalities train through the
same masks as complete ones, and modality dropout hides present modalities at random so that the model learns
to predict from any subset.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alignment import PaddedStreams
from encoders.runtime import autocast, pick_device
from fusion.features import RecordingFeatures
from fusion.model import MODALITIES, FusionBatch, FusionConfig, FusionModel


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # share of the steps with a linear learning-rate warm-up, then cosine decay
    modality_dropout: float = 0.2  # probability of hiding each present modality of an example (one always stays)
    seed: int = 0


def fit(
    examples: Sequence[RecordingFeatures],
    labels: Sequence[str],
    *,
    model_config: FusionConfig | None = None,
    train_config: TrainConfig | None = None,
    device: str | torch.device | None = None,
) -> tuple[FusionModel, list[float]]:
    """Train a fusion model on whole-recording examples, each with one label.

    Returns the model in eval mode and the mean training loss of each epoch. Classes are weighted by inverse
    frequency, so rare emotions count as much as common ones.
    """
    model_config = model_config or FusionConfig()
    train_config = train_config or TrainConfig()
    if len(examples) != len(labels) or not examples:
        raise ValueError(f"need one label per example, got {len(examples)} examples and {len(labels)} labels")
    unknown = sorted(set(labels) - set(model_config.labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the model's label set {model_config.labels}")

    _seed_everything(train_config.seed)
    device = pick_device(device)
    model = FusionModel(model_config).to(device)
    targets = torch.tensor([model_config.labels.index(label) for label in labels])
    counts = torch.bincount(targets, minlength=len(model_config.labels)).float()
    class_weights = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), 0.0)

    streams = [example.streams() for example in examples]
    segments = [(0.0, example.duration) for example in examples]
    steps_per_epoch = -(-len(examples) // train_config.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    schedule = _warmup_cosine(optimizer, total_steps=train_config.epochs * steps_per_epoch, config=train_config)
    generator = torch.Generator().manual_seed(train_config.seed)

    history = []
    for _ in range(train_config.epochs):
        model.train()
        order = torch.randperm(len(examples), generator=generator).tolist()
        losses = []
        for first in range(0, len(order), train_config.batch_size):
            rows = order[first : first + train_config.batch_size]
            batch = FusionBatch.collate([streams[i] for i in rows], [segments[i] for i in rows])
            batch = drop_modalities(batch, train_config.modality_dropout, generator=generator).to(device)
            with autocast(device):
                logits = model(batch)
            loss = F.cross_entropy(logits.float(), targets[rows].to(device), weight=class_weights.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    return model.eval(), history


def drop_modalities(batch: FusionBatch, probability: float, *, generator: torch.Generator) -> FusionBatch:
    """Hide each example's present modalities with the given probability, always keeping at least one."""
    if probability <= 0:
        return batch
    present = torch.stack([batch.streams[m].mask.any(1) for m in MODALITIES], 1)  # (B, 3)
    keep = present & (torch.rand(present.shape, generator=generator) >= probability)
    # Where everything was dropped, keep one present modality at random.
    for row in torch.nonzero(present.any(1) & ~keep.any(1)).flatten().tolist():
        choices = torch.nonzero(present[row]).flatten()
        keep[row, choices[torch.randint(len(choices), (1,), generator=generator)]] = True
    masked = {}
    for column, m in enumerate(MODALITIES):
        stream = batch.streams[m]
        masked[m] = PaddedStreams(stream.values, stream.times, stream.mask & keep[:, column : column + 1])
    return FusionBatch(masked["audio"], masked["text"], masked["video"], batch.segments)


def _warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, config: TrainConfig):
    warmup = max(1, int(config.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
