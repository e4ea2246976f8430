"""Training the voice expert (fusion.experts.voice) on emotional speech, and `fusion train-expert voice`.

    fusion train-expert voice --data ravdess=$FUSION_SHARED/data/ravdess-speech-16k \
        --data nemo=$FUSION_SHARED/data/nemo-pl --cache CACHE/speech --out runs/voice

Its inputs are frozen and cached (:class:`SpeechCache`): the log-mel spectrogram, and the states after each of the
Whisper encoder's blocks. Training runs through the one loop (:class:`fusion.training.loop.Fit`): a fixed number of
epochs of corpus- and class-balanced draws, augmented, saved every epoch; ``--resume`` continues a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from encoders import SAMPLE_RATE
from encoders.audio import HOP_LENGTH, N_FFT, N_MELS, log_mel
from encoders.loading import DEFAULT_WHISPER_MODEL, WHISPER_ENV, choose_model, portable_name
from encoders.runtime import pick_device
from fusion.arguments import positive_int
from fusion.errors import FileError, MediaError
from fusion.experts.voice import (
    SpeakerStatistics,
    SpeechFeatures,
    VoiceBatch,
    VoiceConfig,
    VoiceExpert,
    predict_proba,
    speaker_normalised,
    voice_label,
)
from fusion.storage import save_npz
from fusion.training.augment import AugmentConfig, augment_mel
from fusion.training.cache import CacheReport, read_entry
from fusion.training.loop import Fit, balanced_weights, warmup_cosine
from fusion.training.metrics import score

WHISPER_BLOCKS = 4  # states cached after each of this many encoder blocks (all of tiny.en's)
CACHE_VERSION = 1  # bump when the code computes different speech features from the same settings
STATE_TIME_MASKS = 2  # stripes of Whisper states zeroed per training example
STATE_TIME_MASK_MAX = 10  # states of 20 ms: each stripe spans 0 to 200 ms, like the log-mel SpecAugment stripes
# The log-mel settings a cache entry was computed with (part of its key).
LOG_MEL = {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "n_mels": N_MELS}


class SpeechCache:
    """Speech features of audio files, computed once (decode, log-mel, Whisper states) and read from disk after.

    An entry is keyed by the file's bytes and the settings that make its features (Whisper model, blocks, log-mel
    parameters, CACHE_VERSION); entries are .npz files of plain arrays, written atomically.
    """

    def __init__(self, directory: str | os.PathLike, *, whisper_model: str | os.PathLike | None = None):
        self.directory = Path(directory)
        self.whisper_model = choose_model(whisper_model, env_var=WHISPER_ENV, default=DEFAULT_WHISPER_MODEL)
        self._states = None

    def build(
        self, paths: Sequence[str], *, progress: bool = True, copy: int = 0
    ) -> tuple[list[SpeechFeatures | None], CacheReport]:
        """Features of every file (None where it could not be read, with the reason in the report).

        copy: 0, the recordings as they are; k >= 1, the k-th degraded copy of each (fusion.training.rooms.degrade,
        drawn from a generator seeded by k and the file's bytes: the same copy every time)."""
        report, features = CacheReport(), []
        for path in tqdm(paths, desc="speech features", unit="file", disable=not progress):
            try:
                entry, digest = self._entry(path, copy)
                cached = read_entry(entry, _read_speech, report)
                if cached is not None:
                    features.append(cached)
                    report.loaded += 1
                    continue
                computed = self._compute(path, copy, digest)
            except (FileError, OSError) as error:  # this file's; a model that cannot load stops the build
                report.skipped.append((str(path), str(error)))
                features.append(None)
                continue
            _write_speech(entry, computed)
            features.append(computed)
            report.computed += 1
        return features, report

    def _compute(self, path: str, copy: int, digest: bytes) -> SpeechFeatures:
        from fusion.media.decoding import decode  # PyAV; imported when a file is really decoded

        audio = decode(path).audio
        if audio is None:
            raise MediaError(path, "no audio track")
        if copy:
            from fusion.training.rooms import degrade

            audio, _ = degrade(audio, np.random.default_rng([copy, *digest[:8]]))
        if self._states is None:
            from encoders.whisper_models import load_states_encoder
            from encoders.whisper_states import WhisperStates

            self._states = WhisperStates(load_states_encoder(self.whisper_model, "cpu"), blocks=WHISPER_BLOCKS)
        states, _ = self._states(audio, all_blocks=True)
        return SpeechFeatures(log_mel(audio), states.astype(np.float16))

    def _entry(self, path: str, copy: int = 0) -> tuple[Path, bytes]:
        """The cache file of a recording (or of its degraded copy) and the digest of its bytes."""
        settings = {
            "kind": "speech",
            "version": CACHE_VERSION,
            "whisper_model": portable_name(self.whisper_model, default=DEFAULT_WHISPER_MODEL),
            "whisper_blocks": WHISPER_BLOCKS,
            "audio": LOG_MEL,
        }
        if copy:
            from fusion.training.rooms import ROOMS_VERSION

            settings["degraded"] = {"copy": copy, "rooms": ROOMS_VERSION}
        data = hashlib.sha256(Path(path).read_bytes())
        digest = data.digest()
        data.update(json.dumps(settings, sort_keys=True).encode())
        key = data.hexdigest()
        return self.directory / key[:2] / f"{key}.npz", digest


def _write_speech(entry: Path, features: SpeechFeatures) -> None:
    save_npz(entry, {"mel": features.mel, "states": features.states})


def _read_speech(entry: Path) -> SpeechFeatures:
    with np.load(entry, allow_pickle=False) as data:
        return SpeechFeatures(data["mel"], data["states"])


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
    # with speaker normalisation: draw each recording also standardised alone, as a short clip is served (half the
    # draws). Off in the recipe: measured, not shipped (benchmarks/results/cross_corpus/recordings_alone).
    recordings_alone: bool = False


@dataclass
class VoiceTrainResult:
    model: VoiceExpert  # the last epoch's weights, in eval mode
    history: list[dict]  # per epoch: train_loss, and validation ua / wa when validation data was given
    seconds: float  # training wall time, this run and any run it resumed


def augment(batch: VoiceBatch, generator: torch.Generator) -> VoiceBatch:
    """Gain, noise and SpecAugment on the log-mel (no speed change: it would move the mel off the states'
    times); STATE_TIME_MASKS stripes of zeroed states per example."""
    config = AugmentConfig(speed_probability=0.0)
    batch.mel, batch.mel_mask = augment_mel(batch.mel, batch.mel_mask, config=config, generator=generator)
    lengths = batch.states_mask.sum(1)
    for i, length in enumerate(lengths.tolist()):
        for _ in range(STATE_TIME_MASKS):
            width = int(torch.randint(STATE_TIME_MASK_MAX + 1, (1,), generator=generator))
            start = int(torch.randint(max(1, length - width + 1), (1,), generator=generator))
            batch.states[i, :, start : start + width] = 0
    return batch


class VoiceFit(Fit):
    """Draws with replacement from the balanced sampler; every member of the ensemble learns from its own loss."""

    def __init__(self, versions, targets, weights, config, validation, **options):
        super().__init__(**options)
        self.versions, self.targets, self.weights, self.config = versions, targets, weights, config
        self.validation = validation

    def batches(self, epoch: int):
        per_epoch = self.config.examples_per_epoch or len(self.versions[0])
        order = torch.multinomial(self.weights, per_epoch, replacement=True, generator=self.generator).tolist()
        # each draw reads the recording as it is or one of its degraded copies, equally likely
        version = (
            torch.randint(len(self.versions), (per_epoch,), generator=self.generator).tolist()
            if len(self.versions) > 1
            else [0] * per_epoch  # no draw: runs without copies keep the draws they always had
        )
        for first in range(0, len(order), self.config.batch_size):
            rows = order[first : first + self.config.batch_size]
            chosen = version[first : first + self.config.batch_size]
            batch = VoiceBatch([self.versions[v][i] for i, v in zip(rows, chosen)], self.model.config.whisper_blocks)
            yield rows, augment(batch, self.generator) if self.config.augment else batch

    def loss(self, batch) -> torch.Tensor:
        rows, inputs = batch
        logits = self.model.member_logits(*inputs.inputs(self.device)).float()  # (members, B, n_labels)
        target = self.targets[rows].to(self.device).repeat(len(logits))
        return F.cross_entropy(logits.flatten(0, 1), target, label_smoothing=self.config.label_smoothing)

    def validate(self) -> dict | None:
        if self.validation is None:
            return None
        scores = evaluate(self.model, *self.validation, device=self.device, bf16=self.config.bf16)
        return {"ua": scores.ua, "wa": scores.wa}


def fit(
    train: Sequence[SpeechFeatures],
    labels: Sequence[str],
    *,
    validation: tuple[Sequence[SpeechFeatures], Sequence[str]] | None = None,
    groups: Sequence[str] | None = None,
    speakers: Sequence[str] | None = None,
    copies: Sequence[Sequence[SpeechFeatures]] = (),
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
    speakers: one name per example, required for a model with speaker_normalisation: every example is standardised
        with its speaker's statistics (over all their examples), and with train_config.recordings_alone also, as
        one more copy, with its own alone (as a short recording is served); the prior is the whole training set's.
    copies: degraded copies of the training set (SpeechCache.build(copy=k)), each aligned with train; every draw
        reads the original or one of its copies, equally likely. A copy is normalised with the statistics of the
        speaker's recordings in the same copy (the same room and line).
    resume: continue from state_dir's saved state (same data and settings), so a run cut short loses one epoch at most.
    """
    model_config = model_config or VoiceConfig()
    config = train_config or VoiceTrainConfig()
    unknown = sorted(set(labels) - set(model_config.labels))
    if unknown or len(train) != len(labels) or not train:
        raise ValueError(f"need one known label per example; got {len(train)} examples, unknown labels {unknown}")
    device = pick_device(device)
    torch.manual_seed(config.seed)
    model = VoiceExpert(model_config)
    if model_config.speaker_normalisation:
        if speakers is None or len(speakers) != len(train):
            raise ValueError("speaker normalisation needs one speaker per training example")
        model.set_prior(SpeakerStatistics.of(train))
        # as served, a recording is standardised with its own statistics shrunk towards the prior: mostly its
        # speaker's in a long interview, mostly the prior's in a 3 s clip (config.recordings_alone shows the
        # model that view too)
        each_alone = [str(i) for i in range(len(train))]
        alone = [speaker_normalised(model, train, each_alone)] if config.recordings_alone else []
        train = speaker_normalised(model, train, speakers)  # validation: predict_proba's, each recording alone
        copies = [speaker_normalised(model, copy, speakers) for copy in copies] + alone
    model = model.to(device)
    targets = torch.tensor([model_config.labels.index(label) for label in labels])
    steps_per_epoch = -(-(config.examples_per_epoch or len(train)) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = warmup_cosine(
        optimizer, total_steps=config.epochs * steps_per_epoch, warmup_fraction=config.warmup_fraction
    )
    if any(len(copy) != len(train) for copy in copies):
        raise ValueError("each degraded copy must have one example per training example")
    run = VoiceFit(
        [train, *copies],
        targets,
        balanced_weights(labels, groups),
        config,
        validation,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        device=device,
        generator=torch.Generator().manual_seed(config.seed),
        bf16=config.bf16,
        max_grad_norm=1.0,
        state_dir=state_dir,
        settings={"model": asdict(model_config), "training": asdict(config)}
        | ({"copies": len(copies)} if copies else {}),
    )
    result = run.run(config.epochs, resume=resume, show=progress)
    return VoiceTrainResult(model.eval(), result.history, result.seconds)


def evaluate(model, features, labels, *, device=None, bf16: bool = False):
    probabilities = predict_proba(model, features, device=device, bf16=bf16)
    predicted = [model.config.labels[k] for k in probabilities.argmax(1)]
    return score(list(labels), predicted, model.config.labels)


# ---------------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--speaker-normalisation",
        action="store_true",
        help="standardise the inputs with each speaker's statistics, shrunk towards the training population's"
        " (at prediction: the recording's)",
    )
    parser.add_argument(
        "--recordings-alone",
        action="store_true",
        help="with --speaker-normalisation: also train on each recording standardised alone, as a short clip is served",
    )
    parser.add_argument(
        "--own-statistics-seconds",
        type=float,
        default=VoiceConfig.own_statistics_seconds,
        help="with --speaker-normalisation: a speaker with less speech than this is standardised with the training"
        " population's statistics alone, in training (with --recordings-alone: each recording alone) and at"
        " prediction (default 0: always shrunk towards them)",
    )
    parser.add_argument(
        "--degraded-copies",
        type=int,
        default=0,
        help="also train on this many room-and-phone copies of every recording (fusion.training.rooms; cached)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--whisper-model", help="Whisper name or checkpoint path (default: $FUSION_WHISPER_MODEL)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from fusion.training.datasets import from_specs
    from fusion.training.splits import speaker_split

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
    copies = []
    for k in range(1, args.degraded_copies + 1):
        copy, copy_report = cache.build([e.path for e in examples], copy=k)
        print(f"copy {k}: {copy_report}")
        if copy_report.skipped:
            raise SystemExit(f"copy {k}: no features for {len(copy_report.skipped)} files: {copy_report.skipped[:3]}")
        copies.append(copy)
    model_config = VoiceConfig(
        use_cnn=args.parts != "whisper",
        use_whisper=args.parts != "cnn",
        members=args.members,
        speaker_normalisation=args.speaker_normalisation,
        own_statistics_seconds=args.own_statistics_seconds,
        whisper_dim=features[0].states.shape[-1],
    )
    train_config = VoiceTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        examples_per_epoch=args.examples_per_epoch,
        augment=not args.no_augment,
        bf16=args.bf16,
        seed=args.seed,
        recordings_alone=args.recordings_alone,
    )
    result = fit(
        [features[i] for i in fit_rows],
        [labels[i] for i in fit_rows],
        validation=([features[i] for i in check_rows], [labels[i] for i in check_rows]) if check_rows else None,
        groups=[examples[i].dataset for i in fit_rows],
        speakers=[examples[i].speaker for i in fit_rows],
        copies=[[copy[i] for i in fit_rows] for copy in copies],
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
                "degraded_copies": args.degraded_copies,
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
