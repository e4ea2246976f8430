"""Face expert: a face CNN trained alone on FER2013 face images, with its own 7-way head.

    fusion train-expert face --data fer2013=../shared/data/fer2013/train --out runs/face

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

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from encoders.face_detection import FACE_SIZE
from encoders.face_lite import LiteFaceNet, load_imagenet_weights
from encoders.runtime import autocast, pick_device
from fusion.errors import CheckpointError, MediaError
from fusion.experts.state import (
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
    write_atomic,
)
from fusion.labels import EMOTIONS
from fusion.training.augment import FaceImageAugment, augment_face_images
from fusion.training.metrics import score

STATE_FILE = "train_state.pt"  # the resumable training state, beside the checkpoint it is writing
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VIEWS = ("single", "flip", "shifts")  # test-time views of predict_proba
# Faces per forward pass at inference, by device type. On this 2-core CPU, 1,200 views of FER2013 faces took 1.02 s
# in batches of 16, 1.30 s of 8, 1.61 s of 32 and 2.85 s of 256 (the activations of small batches stay in cache);
# the same probabilities either way. A GPU wants large batches.
PREDICT_BATCH = {"cpu": 16, "cuda": 256}
AVERAGE_PREFIX = "average."  # the averaged weights' keys in the training state
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


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1]."""
    return torch.from_numpy(images).float().div_(255.0).unsqueeze(1)


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
    from fusion.training.train import warmup_cosine

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
    pixels = _pixels(images)
    targets = torch.tensor([model_config.labels.index(label) for label in labels])
    steps_per_epoch = -(-len(images) // config.batch_size)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]  # no weight decay on BatchNorm and biases
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    schedule = warmup_cosine(
        optimizer, total_steps=config.epochs * steps_per_epoch, warmup_fraction=config.warmup_fraction
    )
    generator = torch.Generator().manual_seed(config.seed)
    state = {"epoch": 0, "history": [], "seconds": 0.0}
    state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
    averaging = {k: getattr(config, k) for k in ("average_learning_rate", "average_every")}
    training = {k: v for k, v in asdict(config).items() if k not in averaging and k != "average_epochs"}
    settings = {"model": asdict(model_config), "training": training, "images": len(images)}
    average = torch.optim.swa_utils.AveragedModel(model) if config.average_epochs else None
    if resume:
        if state_path is None:
            raise ValueError("resume needs the state_dir of the run to continue")
        saved_weights, state = load_training_state(
            state_path, optimizer=optimizer, schedule=schedule, generator=generator, settings=settings
        )
        model.load_state_dict({k: v for k, v in saved_weights.items() if not k.startswith(AVERAGE_PREFIX)})
        if state.get("averaging") and state["averaging"] != averaging:
            raise CheckpointError(f"{state_path}: averaging began with {state['averaging']}; resume with the same")
        if average is not None and state.get("averaging"):
            prefix = len(AVERAGE_PREFIX)
            average.load_state_dict({k[prefix:]: v for k, v in saved_weights.items() if k.startswith(AVERAGE_PREFIX)})

    while state["epoch"] < config.epochs + config.average_epochs:
        averaging_epoch = state["epoch"] >= config.epochs
        if averaging_epoch:
            state["averaging"] = averaging
            for group in optimizer.param_groups:
                group["lr"] = config.average_learning_rate
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for first in tqdm(
            range(0, len(order), config.batch_size), disable=not progress, desc=f"epoch {state['epoch'] + 1}"
        ):
            rows = order[first : first + config.batch_size]
            batch = pixels[rows]
            if config.augment is not None:
                batch = augment_face_images(batch, config=config.augment, generator=generator)
            batch = batch.to(device, memory_format=memory_format)
            with autocast(device, cpu_bf16=config.bf16):
                logits = model(batch).float()
            loss = F.cross_entropy(logits, targets[rows].to(device), label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if not averaging_epoch:
                schedule.step()
            elif (first // config.batch_size + 1) % min(config.average_every, steps_per_epoch) == 0:
                average.update_parameters(model)
        state["epoch"] += 1
        record = {"epoch": state["epoch"], "train_loss": float(np.mean(losses))}
        if averaging_epoch:
            _recompute_batch_norm(average.module, pixels, batch_size=256, device=device, memory_format=memory_format)
            record["averaged"] = int(average.n_averaged)
        if validation is not None:
            scores = evaluate(average.module if averaging_epoch else model, *validation, device=device)
            record |= {"accuracy": scores.wa, "ua": scores.ua}
        state["seconds"] += time.perf_counter() - started
        record["minutes"] = round(state["seconds"] / 60, 2)
        state["history"].append(record)
        if progress:
            print(json.dumps(record), flush=True)
        if state_path is not None:
            weights = model.state_dict()
            if state.get("averaging"):
                weights |= {AVERAGE_PREFIX + k: v for k, v in average.state_dict().items()}
            save_training_state(
                state_path,
                weights=weights,
                optimizer=optimizer,
                schedule=schedule,
                generator=generator,
                settings=settings,
                progress=state,
            )
    if config.average_epochs:
        model = average.module
    return FaceTrainResult(model.eval(), state["history"], state["seconds"])


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


def evaluate(model, images, labels, *, device=None, views: str = "flip"):
    probabilities = predict_proba(model, images, device=device, views=views)
    predicted = [model.config.labels[k] for k in probabilities.argmax(1)]
    return score(list(labels), predicted, model.config.labels)


# ---------------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fusion.cli import positive_int

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
