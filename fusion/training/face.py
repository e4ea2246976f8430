"""Training the face expert (fusion.experts.face) on FER2013 face images, and `fusion train-expert face`.

    fusion train-expert face --data fer2013=$FUSION_SHARED/data/fer2013/train --out runs/face

EfficientNet-Lite0 adapted to 48x48 grey crops, initialised from its ImageNet weights (the ``[train]`` extra) and
fine-tuned end to end through the one loop (:class:`fusion.training.loop.Fit`): AdamW, linear warm-up then cosine
decay, label smoothing, :class:`fusion.training.augment.FaceImageAugment`, then stochastic weight averaging over a
few more epochs at a constant learning rate. A stratified share of the training images (``--validation-fraction``,
fixed by the seed) is scored after every epoch for the record; it chooses nothing, the averaged weights are kept.
Test images (FER2013 PublicTest) are never seen by training. ``--resume`` continues a run cut short.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders.face_lite import load_imagenet_weights
from encoders.runtime import pick_device
from fusion.arguments import positive_int
from fusion.errors import CheckpointError
from fusion.experts.face import FaceConfig, FaceExpert, _pixels, predict_proba, read_faces
from fusion.training.augment import FaceImageAugment, augment_face_images
from fusion.training.loop import Fit, warmup_cosine
from fusion.training.metrics import score

AVERAGE_PREFIX = "average."  # the averaged weights' keys in the training state


@dataclass
class FaceTrainConfig:
    epochs: int = 25  # of the cosine schedule; validation accuracy levelled off from epoch 17 (66.5-66.9%)
    batch_size: int = 64
    learning_rate: float = 1e-3  # AdamW peak, after warm-up
    weight_decay: float = 0.05
    warmup_fraction: float = 0.03
    label_smoothing: float = 0.1
    pretrained: bool = True  # start from the ImageNet weights (encoders.face_lite.load_imagenet_weights)
    augment: FaceImageAugment = field(default_factory=FaceImageAugment)
    channels_last: bool = True  # 177 vs 99 training images/s here (benchmarks/results/face_expert/speed.md)
    bf16: bool = False
    seed: int = 0
    # Stochastic weight averaging (Izmailov et al., 2018) after the cosine epochs: this many more epochs at a constant
    # learning rate, the weights averaged every average_every steps, then BatchNorm statistics recomputed on the
    # training faces. 0 keeps the last cosine epoch's weights. Not part of the resume check, so a finished run can be
    # extended with --resume.
    average_epochs: int = 3  # validation accuracy 66.6% at epoch 25, 68.2 / 68.0 / 68.1% averaged after 26-28
    average_learning_rate: float = 2e-4  # where the cosine run's validation accuracy levelled off (epochs 17-25)
    average_every: int = 100  # steps; 404 steps per epoch on FER2013 Training's 90% at batch 64


@dataclass
class FaceTrainResult:
    model: FaceExpert
    history: list[dict]
    seconds: float


def stratified_split(labels: Sequence[str], *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Rows to fit on and rows held out: `fraction` of each class held out, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        held.extend(rng.choice(rows, size=round(fraction * len(rows)), replace=False).tolist())
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


class FaceFit(Fit):
    """Shuffled, augmented batches; after the cosine epochs, stochastic weight averaging at a constant rate, the
    averaged weights' BatchNorm statistics recomputed at each averaging epoch's end (they need their own)."""

    def __init__(self, pixels, targets, validation, config, memory_format, **options):
        super().__init__(**options)
        self.pixels, self.targets, self.validation, self.config = pixels, targets, validation, config
        self.memory_format = memory_format
        self.average = torch.optim.swa_utils.AveragedModel(self.model) if config.average_epochs else None
        self.steps_per_epoch = -(-len(pixels) // config.batch_size)

    def averaging(self, epoch: int) -> bool:
        return epoch > self.config.epochs

    def batches(self, epoch: int):
        if self.averaging(epoch):
            self.progress["averaging"] = self.averaging_settings()
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.average_learning_rate
        order = torch.randperm(len(self.pixels), generator=self.generator)
        for first in range(0, len(order), self.config.batch_size):
            rows = order[first : first + self.config.batch_size]
            batch = self.pixels[rows]
            if self.config.augment is not None:
                batch = augment_face_images(batch, config=self.config.augment, generator=self.generator)
            yield rows, batch.to(self.device, memory_format=self.memory_format)

    def loss(self, batch) -> torch.Tensor:
        rows, pixels = batch
        logits = self.model(pixels).float()
        return F.cross_entropy(logits, self.targets[rows].to(self.device), label_smoothing=self.config.label_smoothing)

    def step_schedule(self, epoch: int) -> bool:
        return not self.averaging(epoch)

    def after_step(self, epoch: int, step: int) -> None:
        if self.averaging(epoch) and step % min(self.config.average_every, self.steps_per_epoch) == 0:
            self.average.update_parameters(self.model)

    def after_epoch(self, epoch: int, record: dict) -> None:
        if self.averaging(epoch):
            _recompute_batch_norm(
                self.average.module, self.pixels, batch_size=256, device=self.device, memory_format=self.memory_format
            )
            record["averaged"] = int(self.average.n_averaged)

    def validate(self) -> dict | None:
        if self.validation is None:
            return None
        averaged = self.progress["epoch"] + 1 > self.config.epochs
        scores = evaluate(self.average.module if averaged else self.model, *self.validation, device=self.device)
        return {"accuracy": scores.wa, "ua": scores.ua}

    def averaging_settings(self) -> dict:
        return {k: getattr(self.config, k) for k in ("average_learning_rate", "average_every")}

    def state_weights(self) -> dict[str, torch.Tensor]:
        weights = self.model.state_dict()
        if self.progress.get("averaging"):
            weights |= {AVERAGE_PREFIX + k: v for k, v in self.average.state_dict().items()}
        return weights

    def load_state_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k: v for k, v in weights.items() if not k.startswith(AVERAGE_PREFIX)})
        if self.progress.get("averaging") and self.progress["averaging"] != self.averaging_settings():
            raise CheckpointError(f"averaging began with {self.progress['averaging']}; resume with the same")
        if self.average is not None and self.progress.get("averaging"):
            prefix = len(AVERAGE_PREFIX)
            self.average.load_state_dict({k[prefix:]: v for k, v in weights.items() if k.startswith(AVERAGE_PREFIX)})


def fit(
    images: np.ndarray,
    labels: Sequence[str],
    *,
    validation: tuple[np.ndarray, Sequence[str]] | None = None,
    model_config: FaceConfig | None = None,
    train_config: FaceTrainConfig | None = None,
    device: str | torch.device | None = None,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
    imagenet_weights: str | os.PathLike | None = None,
    progress: bool = False,
) -> FaceTrainResult:
    """Train a face expert for a fixed number of epochs; with state_dir, save the whole state there every epoch.

    images: (N, 48, 48) uint8 grey faces; labels: one of model_config.labels each.
    validation: scored after every epoch, for the record (history); it chooses nothing, the last epoch is returned
        (or, with config.average_epochs, the averaged weights).
    resume: continue from state_dir's saved state (same data and settings): a run cut short loses one epoch at most.
    imagenet_weights: the Lite0 ImageNet file (default: the installed package's); unused with pretrained=False.
    """
    model_config = model_config or FaceConfig()
    config = train_config or FaceTrainConfig()
    unknown = sorted(set(labels) - set(model_config.labels))
    if unknown or len(images) != len(labels) or not len(images):
        raise ValueError(f"need one known label per image; got {len(images)} images, unknown labels {unknown}")
    device = pick_device(device)
    torch.manual_seed(config.seed)
    model = FaceExpert(model_config)
    if config.pretrained:
        load_imagenet_weights(model.backbone, imagenet_weights)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    steps_per_epoch = -(-len(images) // config.batch_size)
    decay = [p for p in model.parameters() if p.ndim > 1]  # no weight decay on BatchNorm and biases
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    averaging = ("average_epochs", "average_learning_rate", "average_every")
    training = {k: v for k, v in asdict(config).items() if k not in averaging}
    run = FaceFit(
        _pixels(images),
        torch.tensor([model_config.labels.index(label) for label in labels]),
        validation,
        config,
        memory_format,
        model=model,
        optimizer=optimizer,
        schedule=warmup_cosine(
            optimizer, total_steps=config.epochs * steps_per_epoch, warmup_fraction=config.warmup_fraction
        ),
        device=device,
        generator=torch.Generator().manual_seed(config.seed),
        bf16=config.bf16,
        state_dir=state_dir,
        settings={"model": asdict(model_config), "training": training, "images": len(images)},
    )
    result = run.run(config.epochs + config.average_epochs, resume=resume, show=progress)
    model = run.average.module if config.average_epochs else model
    return FaceTrainResult(model.eval(), result.history, result.seconds)


@torch.no_grad()
def _recompute_batch_norm(model: nn.Module, pixels: torch.Tensor, *, batch_size: int, device, memory_format) -> None:
    """BatchNorm running statistics of averaged weights, measured afresh: one pass over the (un-augmented) training
    faces with each layer's momentum None (a plain cumulative mean). Averaged weights need their own statistics."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    for first in range(0, len(pixels), batch_size):
        model(pixels[first : first + batch_size].to(device, memory_format=memory_format))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.eval()


def evaluate(model, images, labels, *, device=None, views: str = "flip"):
    probabilities = predict_proba(model, images, device=device, views=views)
    predicted = [model.config.labels[k] for k in probabilities.argmax(1)]
    return score(list(labels), predicted, model.config.labels)


# ---------------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FaceTrainConfig()
    parser.add_argument("--data", action="append", required=True, help="face images as KIND=PATH (fer2013, images)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument(
        "--average-epochs",
        type=int,
        default=defaults.average_epochs,
        help="epochs of stochastic weight averaging after --epochs (default %(default)s: keep the last epoch)",
    )
    parser.add_argument("--average-learning-rate", type=float, default=defaults.average_learning_rate)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="share of each class held out (fixed by --seed) and scored every epoch; 0 for none (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--stem-stride", type=int, choices=(1, 2), default=FaceConfig.stem_stride)
    parser.add_argument("--no-pretrained", action="store_true", help="random initialisation instead of ImageNet")
    parser.add_argument("--limit", type=positive_int, help="train on the first N images of a shuffle (quick runs)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from fusion.training.datasets import from_specs

    examples = [e for e in from_specs(args.data).examples if e.modalities == ("video",)]
    if not examples:
        raise SystemExit(f"no face images in {args.data}")
    if args.limit:
        keep = np.random.default_rng(args.seed).permutation(len(examples))[: args.limit]
        examples = [examples[i] for i in sorted(keep)]
    images = read_faces([e.path for e in examples])
    labels = [e.label for e in examples]
    if args.validation_fraction > 0:
        fit_rows, check_rows = stratified_split(labels, fraction=args.validation_fraction, seed=args.seed)
    else:
        fit_rows, check_rows = list(range(len(examples))), []
    model_config = FaceConfig(stem_stride=args.stem_stride)
    train_config = FaceTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        average_epochs=args.average_epochs,
        average_learning_rate=args.average_learning_rate,
        pretrained=not args.no_pretrained,
        bf16=args.bf16,
        seed=args.seed,
    )
    print(f"{len(fit_rows)} training images, {len(check_rows)} validation images", flush=True)
    result = fit(
        images[fit_rows],
        [labels[i] for i in fit_rows],
        validation=(images[check_rows], [labels[i] for i in check_rows]) if check_rows else None,
        model_config=model_config,
        train_config=train_config,
        device=args.device,
        state_dir=args.out,
        resume=args.resume,
        progress=True,
    )
    result.model.save(
        args.out,
        extra={
            "training": {
                "arguments": {
                    k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, list, type(None)))
                },
                "data": args.data,
                "validation_fraction": args.validation_fraction,
                "config": asdict(train_config),
                "seconds": result.seconds,
                "history": result.history,
            }
        },
    )
    last = result.history[-1]
    print(
        f"wrote {args.out} ({len(result.history)} epochs, validation accuracy {last.get('accuracy', float('nan')):.3f},"
        f" {result.seconds / 60:.1f} min)"
    )
    return 0
