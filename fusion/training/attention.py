"""Training the learned fusion (fusion.experts.attention) on paired expert outputs, through the one loop.

Each epoch draws fresh label-matched examples (:func:`paired_examples`) with modality dropout; the epoch with the
lowest loss on fixed validation pairs is kept, the untrained model (late fusion itself) competing as epoch 0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from encoders.runtime import pick_device
from fusion.experts.attention import AttentionFusion, AttentionFusionConfig, batch_tensors
from fusion.experts.late_fusion import LateFusion
from fusion.labels import EMOTIONS, MODALITIES
from fusion.training.loop import Fit, KeepBestInMemory


@dataclass(frozen=True)
class AttentionTrainConfig:
    modality_dropout: float = 0.5  # chance that each modality of a training example is dropped (one always kept)
    epochs: int = 30
    examples_per_epoch: int = 8192  # paired examples drawn afresh every epoch
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    seed: int = 0


def paired_examples(
    pools: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n: int,
    generator: np.random.Generator,
    *,
    modality_dropout: float = 0.0,
    keep: Sequence[str] | None = None,
    class_mix: np.ndarray | None = None,
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """n examples of classes drawn by class_mix (default uniform), each taking one output of its class from every
    modality's pool.

    pools: {modality: ((N_m, C) probabilities, (N_m,) class indices)}; a class missing from a modality's pool leaves
    that modality out of its examples. keep: the modalities used (default all the pools'); modality_dropout: each kept
    modality of an example dropped with this chance, one always left. -> (examples, (n,) class indices)
    """
    keep = tuple(keep or pools)
    by_class = {m: [np.flatnonzero(pools[m][1] == c) for c in range(len(EMOTIONS))] for m in keep}
    classes = [c for c in range(len(EMOTIONS)) if any(len(by_class[m][c]) for m in keep)]
    mix = None if class_mix is None else np.asarray(class_mix, np.float64)[classes] / np.sum(class_mix[classes])
    labels = generator.choice(classes, size=n, p=mix)
    examples = []
    for c in labels:
        have = [m for m in keep if len(by_class[m][c])]
        if modality_dropout > 0:
            chosen = [m for m in have if generator.random() >= modality_dropout]
            have = chosen or [have[generator.integers(len(have))]]
        examples.append({m: pools[m][0][[generator.choice(by_class[m][c])]] for m in have})
    return examples, np.asarray(labels)


@dataclass
class FitResult:
    model: AttentionFusion
    epoch: int  # the epoch chosen on the validation pairs (1-based; 0: late fusion itself, the untrained model)
    history: list[float]  # validation loss after each epoch, history[0] before training
    seconds: float


class AttentionFit(KeepBestInMemory, Fit):
    def __init__(self, pools, validation, config: AttentionTrainConfig, **options):
        super().__init__(**options)
        self.pools, self.config = pools, config
        self.val_inputs = batch_tensors(self.model.late, validation[0])
        self.val_labels = torch.from_numpy(validation[1])
        self.numbers = np.random.default_rng(config.seed)  # draws the pairs (numpy), as the pools are numpy arrays
        self.mix = self.model.late.pooled_prior(MODALITIES, len(EMOTIONS))

    def batches(self, epoch: int):
        examples, labels = paired_examples(
            self.pools,
            self.config.examples_per_epoch,
            self.numbers,
            modality_dropout=self.config.modality_dropout,
            class_mix=self.mix,
        )
        for first in range(0, len(examples), self.config.batch_size):
            last = first + self.config.batch_size
            yield batch_tensors(self.model.late, examples[first:last]), torch.from_numpy(labels[first:last])

    def loss(self, batch) -> torch.Tensor:
        inputs, labels = batch
        logits = self.model(*(t.to(self.device) for t in inputs))
        return nn.functional.cross_entropy(logits.float(), labels.to(self.device))

    def validate(self) -> dict:
        with torch.inference_mode():
            logits = self.model(*(t.to(self.device) for t in self.val_inputs)).float()
            return {"loss": float(nn.functional.cross_entropy(logits, self.val_labels.to(self.device)))}


def fit(
    late: LateFusion,
    train_pools: Mapping[str, tuple[np.ndarray, np.ndarray]],
    validation: tuple[list[dict[str, np.ndarray]], np.ndarray],
    config: AttentionTrainConfig | None = None,
    model_config: AttentionFusionConfig | None = None,
    device: str | torch.device | None = None,
) -> FitResult:
    """Train on fresh paired examples each epoch; keep the weights of the epoch with the lowest validation loss
    (the untrained model, i.e. late fusion, competes as epoch 0)."""
    started = time.perf_counter()
    config = config or AttentionTrainConfig()
    torch.manual_seed(config.seed)
    model = AttentionFusion(model_config or AttentionFusionConfig(), late).to(pick_device(device))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    run = AttentionFit(
        train_pools,
        validation,
        config,
        model=model,
        optimizer=optimiser,
        device=next(model.parameters()).device,
        generator=torch.Generator().manual_seed(config.seed),
        keep="-loss",
        validate_first=True,
    )
    result = run.run(config.epochs)
    history = [record["loss"] for record in result.history]
    return FitResult(model.eval(), result.best_epoch, history, time.perf_counter() - started)
