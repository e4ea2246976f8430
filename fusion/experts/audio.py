"""Voice expert: the spectrogram CNN and Whisper encoder states, trained alone on emotional speech.

    fusion train-expert audio --data ravdess=../shared/data/ravdess-speech-16k --data nemo=../shared/data/nemo-pl \
        --cache ../cache/speech --out runs/voice

Its inputs are frozen and cached (:class:`SpeechCache`): the log-mel spectrogram, and the states after each of the
Whisper encoder's blocks (:mod:`encoders.whisper_states`). The trainable part is :class:`VoiceExpert`: a learned
mix of the chosen Whisper blocks, the voice encoder (:class:`encoders.audio.VoiceEncoder`: CNN tokens plus projected
states, one token per 40 ms), a per-token feed-forward block, attentive statistics pooling and a linear head over
:data:`VOICE_LABELS`. A run saves its full state after every epoch and ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from encoders.audio import N_MELS, VoiceEncoder, log_mel
from encoders.loading import DEFAULT_WHISPER_MODEL, WHISPER_ENV, choose_model, portable_name
from encoders.runtime import autocast, pick_device
from fusion.errors import CheckpointError, FileError, MediaError
from fusion.experts.state import (
    load_training_state,
    load_weights,
    save_npz,
    save_training_state,
    save_weights,
    write_atomic,
)
from fusion.labels import EMOTIONS
from fusion.training.augment import AugmentConfig, augment_mel
from fusion.training.cache import CacheReport, read_entry
from fusion.training.metrics import score

# The voice expert's classes: the seven canonical emotions and RAVDESS's calm, kept apart so that RAVDESS's 8 classes
# can be scored; for the 7 canonical emotions calm's probability is added to neutral's (as fusion.labels maps it).
VOICE_LABELS: tuple[str, ...] = (*EMOTIONS, "calm")
WHISPER_BLOCKS = 4  # states cached after each of this many encoder blocks (all of tiny.en's)
CACHE_VERSION = 1  # bump when the code computes different speech features from the same settings
STATE_FILE = "train_state.pt"  # the resumable training state, beside the checkpoint it is writing
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_TIME_MASKS = 2  # stripes of Whisper states zeroed per training example
STATE_TIME_MASK_MAX = 10  # states of 20 ms: each stripe spans 0 to 200 ms, like the log-mel SpecAugment stripes


def voice_label(dataset: str, label: str, native_label: str) -> str:
    """An example's class among VOICE_LABELS: its canonical label, except RAVDESS's calm."""
    return "calm" if dataset == "ravdess" and native_label == "calm" else label


def to_canonical(probabilities: np.ndarray) -> np.ndarray:
    """(N, len(VOICE_LABELS)) -> (N, len(EMOTIONS)) with calm added to neutral."""
    out = probabilities[:, : len(EMOTIONS)].copy()
    out[:, EMOTIONS.index("neutral")] += probabilities[:, VOICE_LABELS.index("calm")]
    return out


# ---------------------------------------------------------------------------------------------------------- features


@dataclass
class SpeechFeatures:
    """The frozen inputs of the voice expert for one recording.

    mel: (T, N_MELS) float32 natural-log mel power, 10 ms frames
    states: (WHISPER_BLOCKS, S, dim) float16 Whisper encoder states after each block, 20 ms apart (S ~ T / 2)
    """

    mel: np.ndarray
    states: np.ndarray


class SpeechCache:
    """Speech features of audio files, computed once (decode, log-mel, Whisper states) and read from disk after.

    An entry is keyed by the file's bytes and the settings that make its features (Whisper model, blocks, log-mel
    parameters, CACHE_VERSION); entries are .npz files of plain arrays, written atomically.
    """

    def __init__(self, directory: str | os.PathLike, *, whisper_model: str | os.PathLike | None = None):
        self.directory = Path(directory)
        self.whisper_model = choose_model(whisper_model, env_var=WHISPER_ENV, default=DEFAULT_WHISPER_MODEL)
        self._states = None

    def build(self, paths: Sequence[str], *, progress: bool = True) -> tuple[list[SpeechFeatures | None], CacheReport]:
        """Features of every file (None where it could not be read, with the reason in the report)."""
        report, features = CacheReport(), []
        for path in tqdm(paths, desc="speech features", unit="file", disable=not progress):
            try:
                entry = self._entry(path)
                cached = read_entry(entry, _read_speech, report)
                if cached is not None:
                    features.append(cached)
                    report.loaded += 1
                    continue
                computed = self._compute(path)
            except (FileError, OSError) as error:  # this file's; a model that cannot load stops the build
                report.skipped.append((str(path), str(error)))
                features.append(None)
                continue
            _write_speech(entry, computed)
            features.append(computed)
            report.computed += 1
        return features, report

    def _compute(self, path: str) -> SpeechFeatures:
        from fusion.media.decoding import decode  # PyAV; imported when a file is really decoded

        audio = decode(path).audio
        if audio is None:
            raise MediaError(path, "no audio track")
        if self._states is None:
            from encoders.text import Transcriber
            from encoders.whisper_states import WhisperStates

            model = Transcriber(self.whisper_model, device="cpu").model
            self._states = WhisperStates(model, blocks=WHISPER_BLOCKS)
        states, _ = self._states(audio, all_blocks=True)
        return SpeechFeatures(log_mel(audio), states.astype(np.float16))

    def _entry(self, path: str) -> Path:
        from fusion.checkpoint import feature_parameters

        settings = {
            "kind": "speech",
            "version": CACHE_VERSION,
            "whisper_model": portable_name(self.whisper_model, default=DEFAULT_WHISPER_MODEL),
            "whisper_blocks": WHISPER_BLOCKS,
            "audio": feature_parameters()["audio"],
        }
        digest = hashlib.sha256(Path(path).read_bytes())
        digest.update(json.dumps(settings, sort_keys=True).encode())
        key = digest.hexdigest()
        return self.directory / key[:2] / f"{key}.npz"


def _write_speech(entry: Path, features: SpeechFeatures) -> None:
    save_npz(entry, {"mel": features.mel, "states": features.states})


def _read_speech(entry: Path) -> SpeechFeatures:
    with np.load(entry, allow_pickle=False) as data:
        return SpeechFeatures(data["mel"], data["states"])


# ------------------------------------------------------------------------------------------------------------- model


@dataclass
class VoiceConfig:
    labels: tuple[str, ...] = VOICE_LABELS
    dim: int = 128  # spectrogram CNN token width
    whisper_dim: int = 384  # Whisper encoder width (tiny.en: 384)
    # 1-based Whisper blocks whose states are mixed with learned weights; the 3rd alone did best on validation speakers
    whisper_blocks: tuple[int, ...] = (3,)
    use_cnn: bool = True
    use_whisper: bool = True
    dropout: float = 0.3
    members: int = 1  # independently initialised copies trained side by side; their probabilities are averaged


class VoiceExpert(nn.Module):
    """An ensemble of config.members :class:`VoiceMember` s: the mean of their probabilities (as log-probabilities)."""

    def __init__(self, config: VoiceConfig):
        super().__init__()
        self.config = config
        self.members = nn.ModuleList([VoiceMember(config) for _ in range(config.members)])

    def member_logits(self, mel, mel_mask, states, states_mask) -> torch.Tensor:
        """-> (members, B, n_labels): each member's logits (each trains on its own loss)."""
        return torch.stack([member(mel, mel_mask, states, states_mask) for member in self.members])

    def forward(self, mel, mel_mask, states, states_mask) -> torch.Tensor:
        """-> (B, n_labels) log of the members' mean probabilities; see :meth:`VoiceMember.tokens` for the shapes."""
        logits = self.member_logits(mel, mel_mask, states, states_mask).float()
        return torch.logsumexp(logits.log_softmax(-1), 0) - math.log(len(self.members))

    def save(self, directory: str | os.PathLike, *, extra: dict | None = None) -> Path:
        """model.safetensors and config.json into directory (no pickle); extra goes into the config as it is."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory / WEIGHTS_FILE, self.state_dict())
        config = {"kind": "voice-expert", "model": asdict(self.config)} | (extra or {})
        write_atomic(directory / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> VoiceExpert:
        directory = Path(directory)
        try:
            config = json.loads((directory / CONFIG_FILE).read_text())
            model_config = config["model"]
            model = cls(VoiceConfig(**model_config | {k: tuple(model_config[k]) for k in ("labels", "whisper_blocks")}))
            model.load_state_dict(load_weights(directory / WEIGHTS_FILE))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{directory}: not a readable voice expert ({error})") from error
        return model.to(device).eval()


class VoiceMember(nn.Module):
    """(log-mel, Whisper states) -> one token per 40 ms -> mean and std over the tokens -> standardised -> logits.

    The head is linear on standardised statistics (a BatchNorm without affine weights standardises them with the
    training set's statistics, as scikit-learn's StandardScaler would), so with the CNN off a member is the
    pooled-state linear probe with learned Whisper block weights, trained end to end.
    """

    def __init__(self, config: VoiceConfig):
        super().__init__()
        self.config = config
        self.block_logits = nn.Parameter(torch.zeros(len(config.whisper_blocks)))
        self.encoder = VoiceEncoder(
            cnn_dim=config.dim, whisper_dim=config.whisper_dim, use_cnn=config.use_cnn, use_whisper=config.use_whisper
        )
        self.standardise = nn.BatchNorm1d(2 * self.encoder.dim, affine=False)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * self.encoder.dim, len(config.labels)))

    def tokens(
        self, mel: torch.Tensor, mel_mask: torch.Tensor, states: torch.Tensor, states_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, T, N_MELS), mel_mask (B, T); states (B, K, S, whisper_dim) after each of config.whisper_blocks,
        states_mask (B, S) -> tokens (B, T', encoder.dim) and their mask (B, T'), one per 40 ms."""
        weights = self.block_logits.softmax(0).to(states.dtype)
        mixed = torch.einsum("bksd,k->bsd", states, weights)
        return self.encoder(mel, mel_mask, mixed, states_mask)

    def forward(self, mel, mel_mask, states, states_mask) -> torch.Tensor:
        """-> (B, n_labels) logits; see :meth:`tokens` for the shapes."""
        x, mask = self.tokens(mel, mel_mask, states, states_mask)
        x = x.float()  # statistics in float32 also under bf16 autocast
        weights = (mask / mask.sum(1, keepdim=True).clamp(min=1))[..., None]  # (B, T', 1): mean over real tokens
        mean = (weights * x).sum(1)
        std = ((weights * (x - mean[:, None]) ** 2).sum(1) + 1e-5).sqrt()
        return self.head(self.standardise(torch.cat([mean, std], -1)))


# ---------------------------------------------------------------------------------------------------------- training


@dataclass
class VoiceTrainConfig:
    epochs: int = 15  # a fixed schedule; chosen by validation UA on training speakers (benchmarks/voice_selection.py)
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1  # share of the steps with a linear warm-up, then cosine decay to zero
    label_smoothing: float = 0.1
    examples_per_epoch: int | None = None  # examples drawn per epoch (default: the training set's size)
    augment: bool = True  # gain, noise and SpecAugment on the log-mel; time stripes of zeroed Whisper states
    bf16: bool = False  # bf16 autocast on the CPU too (on CUDA it is always on)
    seed: int = 0


@dataclass
class VoiceTrainResult:
    model: VoiceExpert  # the last epoch's weights, in eval mode
    history: list[dict]  # per epoch: train_loss, and validation ua / wa when validation data was given
    seconds: float  # training wall time, this run and any run it resumed


class VoiceBatch:
    """Padded inputs of B examples: mel (B, T, N_MELS), mel_mask (B, T), states (B, K, S, D) after each of the K
    1-based `blocks`, states_mask (B, S)."""

    def __init__(self, features: Sequence[SpeechFeatures], blocks: Sequence[int]):
        n_mel = max(len(f.mel) for f in features)
        n_states = max(f.states.shape[1] for f in features)
        rows = [b - 1 for b in blocks]
        dim = features[0].states.shape[-1]
        self.mel = torch.zeros(len(features), n_mel, N_MELS)
        self.mel_mask = torch.zeros(len(features), n_mel, dtype=torch.bool)
        self.states = torch.zeros(len(features), len(rows), n_states, dim)
        self.states_mask = torch.zeros(len(features), n_states, dtype=torch.bool)
        for i, f in enumerate(features):
            self.mel[i, : len(f.mel)] = torch.from_numpy(f.mel)
            self.mel_mask[i, : len(f.mel)] = True
            self.states[i, :, : f.states.shape[1]] = torch.from_numpy(f.states[rows].astype(np.float32))
            self.states_mask[i, : f.states.shape[1]] = True

    def inputs(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(device) for t in (self.mel, self.mel_mask, self.states, self.states_mask))

    def augment(self, generator: torch.Generator) -> VoiceBatch:
        """Gain, noise and SpecAugment on the log-mel (no speed change: it would move the mel off the states'
        times); STATE_TIME_MASKS stripes of zeroed states per example."""
        config = AugmentConfig(speed_probability=0.0)
        self.mel, self.mel_mask = augment_mel(self.mel, self.mel_mask, config=config, generator=generator)
        lengths = self.states_mask.sum(1)
        for i, length in enumerate(lengths.tolist()):
            for _ in range(STATE_TIME_MASKS):
                width = int(torch.randint(STATE_TIME_MASK_MAX + 1, (1,), generator=generator))
                start = int(torch.randint(max(1, length - width + 1), (1,), generator=generator))
                self.states[i, :, start : start + width] = 0
        return self


def fit(
    train: Sequence[SpeechFeatures],
    labels: Sequence[str],
    *,
    validation: tuple[Sequence[SpeechFeatures], Sequence[str]] | None = None,
    groups: Sequence[str] | None = None,
    model_config: VoiceConfig | None = None,
    train_config: VoiceTrainConfig | None = None,
    device: str | torch.device | None = None,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
) -> VoiceTrainResult:
    """Train a voice expert for a fixed number of epochs; with state_dir, save the whole training state there after
    every epoch.

    validation: scored after every epoch, for the record (history); it chooses nothing, the last epoch is returned.
    groups: one name per example (its corpus): each corpus gets an equal share of every epoch, its classes balanced.
    resume: continue from state_dir's saved state (same data and settings), so a run cut short loses one epoch at most.
    """
    from fusion.training.train import balanced_weights, warmup_cosine

    model_config = model_config or VoiceConfig()
    config = train_config or VoiceTrainConfig()
    unknown = sorted(set(labels) - set(model_config.labels))
    if unknown or len(train) != len(labels) or not train:
        raise ValueError(f"need one known label per example; got {len(train)} examples, unknown labels {unknown}")
    device = pick_device(device)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = VoiceExpert(model_config).to(device)
    targets = torch.tensor([model_config.labels.index(label) for label in labels])
    weights = balanced_weights(labels, groups)
    per_epoch = config.examples_per_epoch or len(train)
    steps_per_epoch = -(-per_epoch // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = warmup_cosine(
        optimizer, total_steps=config.epochs * steps_per_epoch, warmup_fraction=config.warmup_fraction
    )
    generator = torch.Generator().manual_seed(config.seed)
    state = {"epoch": 0, "history": [], "seconds": 0.0}
    state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
    settings = {"model": asdict(model_config), "training": asdict(config)}
    if resume:
        if state_path is None:
            raise ValueError("resume needs the state_dir of the run to continue")
        saved_weights, state = load_training_state(
            state_path, optimizer=optimizer, schedule=schedule, generator=generator, settings=settings
        )
        model.load_state_dict(saved_weights)

    while state["epoch"] < config.epochs:
        started = time.perf_counter()
        model.train()
        order = torch.multinomial(weights, per_epoch, replacement=True, generator=generator).tolist()
        losses = []
        for first in tqdm(
            range(0, len(order), config.batch_size), disable=not progress, desc=f"epoch {state['epoch'] + 1}"
        ):
            rows = order[first : first + config.batch_size]
            batch = VoiceBatch([train[i] for i in rows], model_config.whisper_blocks)
            if config.augment:
                batch.augment(generator)
            with autocast(device, cpu_bf16=config.bf16):
                logits = model.member_logits(*batch.inputs(device)).float()  # (members, B, n_labels)
            target = targets[rows].to(device).repeat(len(logits))
            loss = F.cross_entropy(logits.flatten(0, 1), target, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        state["epoch"] += 1
        record = {"epoch": state["epoch"], "train_loss": float(np.mean(losses))}
        if validation is not None:
            scores = evaluate(model, *validation, device=device, bf16=config.bf16)
            record |= {"ua": scores.ua, "wa": scores.wa}
        state["history"].append(record)
        state["seconds"] += time.perf_counter() - started
        if state_path is not None:
            save_training_state(
                state_path,
                weights=model.state_dict(),
                optimizer=optimizer,
                schedule=schedule,
                generator=generator,
                settings=settings,
                progress=state,
            )
    return VoiceTrainResult(model.eval(), state["history"], state["seconds"])


@torch.inference_mode()
def predict_proba(
    model: VoiceExpert,
    features: Sequence[SpeechFeatures],
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    bf16: bool = False,
) -> np.ndarray:
    """(N, len(model.config.labels)) probabilities, one row per recording."""
    device = pick_device(device)
    model.eval().to(device)
    rows = []
    for first in range(0, len(features), batch_size):
        batch = VoiceBatch(features[first : first + batch_size], model.config.whisper_blocks)
        with autocast(device, cpu_bf16=bf16):
            rows.append(model(*batch.inputs(device)).float().exp().cpu())
    return torch.cat(rows).numpy()


def evaluate(model, features, labels, *, device=None, bf16: bool = False):
    probabilities = predict_proba(model, features, device=device, bf16=bf16)
    predicted = [model.config.labels[k] for k in probabilities.argmax(1)]
    return score(list(labels), predicted, model.config.labels)


# ---------------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fusion.cli import positive_int

    defaults = VoiceTrainConfig()
    parser.add_argument(
        "--data", action="append", required=True, help="speech corpus as KIND=PATH (ravdess, nemo, crema-d, csv, ...)"
    )
    parser.add_argument("--cache", required=True, help="speech feature cache folder (filled on first use)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--examples-per-epoch", type=positive_int, help="examples drawn per epoch (default: as many as there are)"
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.0,
        help="share of speakers held out and scored each epoch (default 0)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--parts", choices=("both", "cnn", "whisper"), default="both", help="which inputs (default both)"
    )
    parser.add_argument(
        "--members", type=positive_int, default=VoiceConfig.members, help="ensemble members trained side by side"
    )
    parser.add_argument("--no-augment", action="store_true", help="train without data augmentation")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--whisper-model", help="Whisper name or checkpoint path (default: $FUSION_WHISPER_MODEL)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from fusion.training.datasets import from_specs, speaker_split

    examples = [e for e in from_specs(args.data).examples if "audio" in e.modalities]
    cache = SpeechCache(args.cache, whisper_model=args.whisper_model)
    features, report = cache.build([e.path for e in examples])
    print(report)
    usable = [i for i, f in enumerate(features) if f is not None]
    examples, features = [examples[i] for i in usable], [features[i] for i in usable]
    labels = [voice_label(e.dataset, e.label, e.native_label) for e in examples]
    if args.validation_fraction > 0:
        fit_rows, check_rows = speaker_split(examples, validation_fraction=args.validation_fraction, seed=args.seed)
    else:
        fit_rows, check_rows = list(range(len(examples))), []
    model_config = VoiceConfig(use_cnn=args.parts != "whisper", use_whisper=args.parts != "cnn", members=args.members)
    train_config = VoiceTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        examples_per_epoch=args.examples_per_epoch,
        augment=not args.no_augment,
        bf16=args.bf16,
        seed=args.seed,
    )
    result = fit(
        [features[i] for i in fit_rows],
        [labels[i] for i in fit_rows],
        validation=([features[i] for i in check_rows], [labels[i] for i in check_rows]) if check_rows else None,
        groups=[examples[i].dataset for i in fit_rows],
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
            "whisper_model": portable_name(cache.whisper_model, default=DEFAULT_WHISPER_MODEL),
            "training": {
                "data": args.data,
                "config": asdict(train_config),
                "seconds": result.seconds,
                "history": result.history,
            },
        },
    )
    last = result.history[-1]
    print(
        f"wrote {args.out} ({len(result.history)} epochs, validation UA {last.get('ua', math.nan):.3f},"
        f" {result.seconds / 60:.1f} min)"
    )
    return 0
