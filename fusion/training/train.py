"""Training the fusion model (with its spectrogram and face CNNs) on extracted features.

Whisper and BERT stay frozen: their outputs are features. Examples with missing modalities (a speech file, a
face image, a transcript) train through the same masks as complete ones, and modality dropout hides present
modalities at random so that the model learns to predict from any subset. Batches are drawn with class-balanced
sampling (within each group, e.g. each corpus, when groups are given), the model is checked on a validation set
after every epoch, and the epoch with the best validation UA is kept.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from alignment import PaddedStreams
from encoders.audio import FRAME_SECONDS
from encoders.loading import DEFAULT_TEXT_MODEL, DEFAULT_WHISPER_MODEL, EncoderSources, portable_name
from encoders.runtime import autocast, pick_device
from fusion.checkpoint import Checkpoint, EncoderNames, save
from fusion.media.features import RecordingFeatures
from fusion.model import MODALITIES, FusionBatch, FusionConfig, FusionModel
from fusion.training.augment import AugmentConfig, augment_faces, augment_mel
from fusion.training.cache import FeatureCache
from fusion.training.datasets import from_specs, speaker_split
from fusion.training.metrics import Scores, score

WHOLE_EXAMPLE = (0.0, math.inf)  # the segment of a training example: all of it, even when augmentation lengthens it


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # share of the steps with a linear learning-rate warm-up, then cosine decay
    modality_dropout: float = 0.2  # probability of hiding each present modality of an example (one always stays)
    examples_per_epoch: int | None = None  # examples drawn per epoch (default: the training set's size)
    patience: int = 8  # epochs without a better validation UA before stopping
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0


@dataclass
class TrainResult:
    model: FusionModel  # the best epoch's weights (by validation UA, else the last epoch), in eval mode
    history: list[dict]  # per epoch: train_loss, and validation ua / wa / macro_f1 / weighted_f1 when validated
    best_epoch: int


def fit(
    examples: Sequence[RecordingFeatures],
    labels: Sequence[str],
    *,
    validation: tuple[Sequence[RecordingFeatures], Sequence[str]] | None = None,
    groups: Sequence[str] | None = None,
    model_config: FusionConfig | None = None,
    train_config: TrainConfig | None = None,
    device: str | torch.device | None = None,
    modalities: Sequence[str] = MODALITIES,
    progress: bool = False,
) -> TrainResult:
    """Train a fusion model on whole-recording examples, each with one label.

    groups: one name per example (e.g. its corpus); sampling then gives every group the same share of each epoch
    and balances classes within a group, so a large corpus does not drown a small one.
    modalities: the modalities the model may see, in training and validation; the others are removed (keep_modalities).
    """
    model_config = model_config or FusionConfig()
    config = train_config or TrainConfig()
    if len(examples) != len(labels) or not examples:
        raise ValueError(f"need one label per example, got {len(examples)} examples and {len(labels)} labels")
    unknown = sorted(set(labels) - set(model_config.labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the model's label set {model_config.labels}")

    _seed_everything(config.seed)
    device = pick_device(device)
    model = FusionModel(model_config).to(device)
    targets = torch.tensor([model_config.labels.index(label) for label in labels])
    streams = [example.streams() for example in examples]
    segments = [WHOLE_EXAMPLE] * len(examples)
    sample_weights = balanced_weights(labels, groups)
    per_epoch = config.examples_per_epoch or len(examples)
    steps_per_epoch = -(-per_epoch // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = warmup_cosine(
        optimizer, total_steps=config.epochs * steps_per_epoch, warmup_fraction=config.warmup_fraction
    )
    generator = torch.Generator().manual_seed(config.seed)

    history: list[dict] = []
    best_ua, best_epoch, best_state = -1.0, len(history), None
    for epoch in range(config.epochs):
        model.train()
        order = torch.multinomial(sample_weights, per_epoch, replacement=True, generator=generator).tolist()
        losses = []
        for first in tqdm(range(0, per_epoch, config.batch_size), desc=f"epoch {epoch + 1}", disable=not progress):
            rows = order[first : first + config.batch_size]
            batch = FusionBatch.collate([streams[i] for i in rows], [segments[i] for i in rows])
            batch = keep_modalities(batch, modalities)
            batch = drop_modalities(batch, config.modality_dropout, generator=generator)
            batch = augment_batch(batch, config.augment, generator=generator).to(device)
            with autocast(device):
                logits = model(batch)
            loss = F.cross_entropy(logits.float(), targets[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if validation is not None:
            scores = evaluate(model, *validation, device=device, modalities=modalities)
            record |= {k: getattr(scores, k) for k in ("ua", "wa", "macro_f1", "weighted_f1")}
            if scores.ua > best_ua:
                best_ua, best_epoch, best_state = scores.ua, epoch + 1, copy.deepcopy(model.state_dict())
            elif epoch + 1 - best_epoch >= config.patience:
                history.append(record)
                break
        history.append(record)
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model.eval(), history, best_epoch if best_state is not None else len(history))


def predict_proba(
    model: FusionModel,
    examples: Sequence[RecordingFeatures],
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    modalities: Sequence[str] = MODALITIES,
) -> np.ndarray:
    """(N, n_labels) probabilities of whole-recording examples that show the model only `modalities`."""
    device = pick_device(device)
    model.eval()
    out = []
    with torch.inference_mode(), autocast(device):
        for first in range(0, len(examples), batch_size):
            chunk = examples[first : first + batch_size]
            batch = FusionBatch.collate([e.streams() for e in chunk], [WHOLE_EXAMPLE] * len(chunk))
            batch = keep_modalities(batch, modalities)
            out.append(torch.softmax(model(batch.to(device)).float(), -1).cpu())
    return torch.cat(out).numpy()


def evaluate(
    model: FusionModel,
    examples: Sequence[RecordingFeatures],
    labels: Sequence[str],
    *,
    device: str | torch.device | None = None,
    modalities: Sequence[str] = MODALITIES,
) -> Scores:
    predicted = predict_proba(model, examples, device=device, modalities=modalities).argmax(1)
    return score(list(labels), [model.config.labels[i] for i in predicted], model.config.labels)


def balanced_weights(labels: Sequence[str], groups: Sequence[str] | None = None) -> torch.Tensor:
    """(N,) sampling weights giving each group an equal share and each class an equal share within its group."""
    groups = list(groups) if groups is not None else [""] * len(labels)
    classes_in_group = {g: len({label for label, h in zip(labels, groups) if h == g}) for g in set(groups)}
    counts = Counter(zip(groups, labels))
    weights = [
        1.0 / (len(classes_in_group) * classes_in_group[g] * counts[g, label]) for label, g in zip(labels, groups)
    ]
    return torch.tensor(weights, dtype=torch.float64)


def augment_batch(batch: FusionBatch, config: AugmentConfig, *, generator: torch.Generator) -> FusionBatch:
    """The batch with its log-mel frames and face crops augmented (see fusion.training.augment)."""
    if not config.enabled:
        return batch
    mel, mel_mask = augment_mel(batch.audio.values, batch.audio.mask, config=config, generator=generator)
    # Speed perturbation changes how many frames are real; frames stay FRAME_SECONDS apart from each start.
    times = batch.audio.times[:, :1] + torch.arange(mel.shape[1]) * FRAME_SECONDS
    faces = augment_faces(batch.video.values, batch.video.mask, config=config, generator=generator)
    return FusionBatch(
        PaddedStreams(mel, times, mel_mask),
        batch.text,
        PaddedStreams(faces, batch.video.times, batch.video.mask),
        batch.segments,
    )


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


def keep_modalities(batch: FusionBatch, modalities: Sequence[str]) -> FusionBatch:
    """The batch with every modality not in `modalities` removed for all examples.

    A removed modality becomes a zero-length stream: what masking all its tokens and cutting the columns that are
    then all padding gives, and what pad_streams makes of examples that lack it. So the model predicts exactly,
    to the bit, as if the examples had never had it (masking alone agrees to about 1e-7: attention over more,
    masked, keys rounds differently). This is how an ablation drops a modality at inference, and trains without one.
    """
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}: expected a subset of {MODALITIES}")
    kept = {}
    for m in MODALITIES:
        stream = batch.streams[m]
        kept[m] = (
            stream if m in modalities else PaddedStreams(stream.values[:, :0], stream.times[:, :0], stream.mask[:, :0])
        )
    return FusionBatch(kept["audio"], kept["text"], kept["video"], batch.segments)


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_fraction: float):
    """Linear warm-up over warmup_fraction of the steps, then cosine decay to zero."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_checkpoint(
    data: Sequence[str],
    *,
    cache_dir: str | os.PathLike,
    out: str | os.PathLike,
    validation_fraction: float = 0.15,
    model_config: FusionConfig | None = None,
    train_config: TrainConfig | None = None,
    device: str | torch.device | None = None,
    weights_dtype: torch.dtype = torch.float32,
    sources: EncoderSources | None = None,
) -> tuple[Path, TrainResult]:
    """Train on corpora given as KIND=PATH specs and write a checkpoint folder with a training.json beside it.

    Features come from (and go to) the cache, extracted with sources (see :class:`FeatureCache`). Each corpus is
    split by speaker into training and validation, so no speaker is in both; the validation UA over the union picks
    the epoch that is kept.
    """
    examples = from_specs(data).examples  # the adapters warn about every file they skip
    cache = FeatureCache(cache_dir, sources=sources)
    features, report = cache.build(examples)
    print(report, file=sys.stderr)
    usable = [i for i, f in enumerate(features) if f is not None]
    train_rows, validation_rows = [], []
    for dataset in sorted({examples[i].dataset for i in usable}):
        rows = [i for i in usable if examples[i].dataset == dataset]
        fit_part, check_part = speaker_split([examples[i] for i in rows], validation_fraction=validation_fraction)
        train_rows += [rows[j] for j in fit_part]
        validation_rows += [rows[j] for j in check_part]

    result = fit(
        [features[i] for i in train_rows],
        [examples[i].label for i in train_rows],
        validation=([features[i] for i in validation_rows], [examples[i].label for i in validation_rows]),
        groups=[examples[i].dataset for i in train_rows],
        model_config=model_config,
        train_config=train_config,
        device=device,
        progress=True,
    )
    names = EncoderNames(
        whisper=portable_name(cache.sources.whisper, default=DEFAULT_WHISPER_MODEL),
        text=portable_name(cache.sources.text, default=DEFAULT_TEXT_MODEL),
    )
    folder = save(Checkpoint(result.model, names, fps=cache.fps), out, dtype=weights_dtype)
    summary = {
        "data": list(data),
        "examples": {"train": len(train_rows), "validation": len(validation_rows), "skipped": len(report.skipped)},
        "train_config": asdict(train_config or TrainConfig()),
        "best_epoch": result.best_epoch,
        "history": result.history,
    }
    (folder / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return folder, result
