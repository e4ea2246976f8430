"""Voice expert: the spectrogram CNN and Whisper encoder states, trained alone on emotional speech.

Its inputs are the log-mel spectrogram and the states after one of the Whisper encoder's blocks
(:mod:`encoders.whisper_states`). :class:`VoiceExpert` is an ensemble of :class:`VoiceMember`: a learned mix of the
chosen Whisper blocks, the voice encoder (:class:`encoders.audio.VoiceEncoder`: CNN tokens plus projected states,
one token per 40 ms), attentive statistics pooling and a linear head over :data:`VOICE_LABELS`. Training lives in
:mod:`fusion.training.voice`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encoders.audio import N_MELS, VoiceEncoder
from encoders.runtime import autocast, pick_device
from fusion.errors import CheckpointError
from fusion.labels import EMOTIONS
from fusion.storage import CONFIG_FILE, WEIGHTS_FILE, load_weights, save_weights, write_atomic

# The voice expert's classes: the seven canonical emotions and RAVDESS's calm, kept apart so that RAVDESS's 8 classes
# can be scored; for the 7 canonical emotions calm's probability is added to neutral's (as fusion.labels maps it).
VOICE_LABELS: tuple[str, ...] = (*EMOTIONS, "calm")


def voice_label(dataset: str, label: str, native_label: str) -> str:
    """An example's class among VOICE_LABELS: its canonical label, except a corpus's own calm (RAVDESS,
    emospeech-in), kept apart from neutral."""
    return "calm" if native_label == "calm" and label == "neutral" else label


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


# ---------------------------------------------------------------------------------------------- speaker normalisation

# A speaker's statistics are estimated with the training population's counted as this many seconds of their speech
# (a 3 s clip is standardised mostly with the population's statistics, a 10-minute interview with its own). Set a
# priori, about three RAVDESS takes; not chosen on any test corpus.
PRIOR_SECONDS = 10.0
MEL_SECONDS = 0.01  # one log-mel frame
STATE_SECONDS = 0.02  # one Whisper state
VARIANCE_FLOOR = 1e-6


@dataclass
class FrameStatistics:
    """Frame count and per-dimension sums and sums of squares (float64): what standardising a speaker's frames
    needs, added up over their recordings, or over a recording's chunks as they come."""

    count: int
    total: np.ndarray  # (..., D)
    squares: np.ndarray  # (..., D)

    @classmethod
    def of(cls, frames: np.ndarray) -> FrameStatistics:
        """frames (..., n, D) -> statistics over the n axis."""
        x = frames.astype(np.float64)
        return cls(x.shape[-2], x.sum(-2), (x**2).sum(-2))

    def __add__(self, other: FrameStatistics) -> FrameStatistics:
        return FrameStatistics(self.count + other.count, self.total + other.total, self.squares + other.squares)

    def rows(self, n: int) -> FrameStatistics:
        """The first n leading rows (per block statistics: blocks 1..n)."""
        return FrameStatistics(self.count, self.total[:n], self.squares[:n])

    def standardiser(self, prior_mean, prior_std, prior_count: float) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of these frames with the prior's counted as prior_count more frames."""
        n = self.count + prior_count
        mean = (self.total + prior_count * prior_mean) / n
        second = (self.squares + prior_count * (prior_std**2 + prior_mean**2)) / n
        return mean, np.sqrt(np.maximum(second - mean**2, VARIANCE_FLOOR))


@dataclass
class SpeakerStatistics:
    """The statistics of one speaker's log-mel frames and Whisper states (per block)."""

    mel: FrameStatistics
    states: FrameStatistics

    @classmethod
    def of(cls, features: Sequence[SpeechFeatures]) -> SpeakerStatistics:
        stats = [cls(FrameStatistics.of(f.mel), FrameStatistics.of(f.states)) for f in features]
        total = stats[0]
        for more in stats[1:]:
            total = total + more
        return total

    def __add__(self, other: SpeakerStatistics) -> SpeakerStatistics:
        return SpeakerStatistics(self.mel + other.mel, self.states + other.states)


def by_group(groups: Sequence[str]) -> dict[str, list[int]]:
    """{group: the indices of its members}, in first-seen order."""
    out: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        out.setdefault(group, []).append(index)
    return out


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
    # Standardise the log-mel and the states with the speaker's own statistics (SpeakerStatistics), shrunk towards
    # the training population's (stored with the weights) by PRIOR_SECONDS: the voice across speakers and rooms
    speaker_normalisation: bool = False
    # with speaker normalisation: a speaker with less speech than this is standardised with the prior alone (a short
    # clip's own statistics are mostly its emotion's, not its speaker's); 0: always shrunk towards the prior
    own_statistics_seconds: float = 0.0


class VoiceExpert(nn.Module):
    """An ensemble of config.members :class:`VoiceMember` s: the mean of their probabilities (as log-probabilities)."""

    def __init__(self, config: VoiceConfig):
        super().__init__()
        self.config = config
        self.members = nn.ModuleList([VoiceMember(config) for _ in range(config.members)])
        if config.speaker_normalisation:  # the training population's mean and std: mel (2, N_MELS), states per block
            self.register_buffer("prior_mel", torch.stack([torch.zeros(N_MELS), torch.ones(N_MELS)]))
            blocks = max(config.whisper_blocks)
            self.register_buffer(
                "prior_states",
                torch.stack([torch.zeros(blocks, config.whisper_dim), torch.ones(blocks, config.whisper_dim)]),
            )

    def set_prior(self, statistics: SpeakerStatistics) -> None:
        """Store the training population's statistics (of every training frame) as the prior."""
        blocks = max(self.config.whisper_blocks)
        for name, stats in (("prior_mel", statistics.mel), ("prior_states", statistics.states)):
            mean = stats.total / stats.count
            std = np.sqrt(np.maximum(stats.squares / stats.count - mean**2, VARIANCE_FLOOR))
            prior = np.stack([mean, std]) if name == "prior_mel" else np.stack([mean[:blocks], std[:blocks]])
            getattr(self, name).copy_(torch.from_numpy(prior.astype(np.float32)))

    def normalise(self, features: SpeechFeatures, statistics: SpeakerStatistics) -> SpeechFeatures:
        """features standardised with their speaker's statistics (of features with as many state rows), shrunk
        towards the prior. States of several blocks (the speech cache's) keep rows 1..max(whisper_blocks); states of
        one block (as served: the block the expert reads, (1, S, D)) are standardised with that block's prior."""
        blocks = max(self.config.whisper_blocks)
        rows = blocks if len(features.states) > 1 else 1
        prior_mel = self.prior_mel.cpu().double().numpy()
        prior_states = self.prior_states[:, -rows:].cpu().double().numpy()  # one row: the block the expert reads
        if statistics.states.count * STATE_SECONDS < self.config.own_statistics_seconds:
            (mel_mean, mel_std), (mean, std) = prior_mel, prior_states  # too little of the speaker: the prior alone
        else:
            mel_mean, mel_std = statistics.mel.standardiser(prior_mel[0], prior_mel[1], PRIOR_SECONDS / MEL_SECONDS)
            mean, std = statistics.states.rows(rows).standardiser(
                prior_states[0], prior_states[1], PRIOR_SECONDS / STATE_SECONDS
            )
        states = features.states[:rows].astype(np.float32)
        return SpeechFeatures(
            ((features.mel - mel_mean) / mel_std).astype(np.float32),
            ((states - mean[:, None]) / std[:, None]).astype(np.float16),
        )

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


@torch.inference_mode()
def predict_proba(
    model: VoiceExpert,
    features: Sequence[SpeechFeatures],
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    bf16: bool = False,
    speakers: Sequence[str] | None = None,
) -> np.ndarray:
    """(N, len(model.config.labels)) probabilities, one row per recording.

    speakers: who speaks in each recording, for an expert with speaker normalisation (the statistics of each
    speaker's recordings together); without, each recording is its own speaker."""
    device = pick_device(device)
    model.eval().to(device)
    if model.config.speaker_normalisation:
        features = speaker_normalised(model, features, speakers or [str(i) for i in range(len(features))])
    rows = []
    for first in range(0, len(features), batch_size):
        batch = VoiceBatch(features[first : first + batch_size], model.config.whisper_blocks)
        with autocast(device, cpu_bf16=bf16):
            rows.append(model(*batch.inputs(device)).float().exp().cpu())
    return torch.cat(rows).numpy()


def speaker_normalised(model: VoiceExpert, features: Sequence[SpeechFeatures], speakers: Sequence[str]):
    """Each recording's features standardised by the model with the statistics of all its speaker's recordings."""
    out: list[SpeechFeatures] = [None] * len(features)  # type: ignore[list-item]
    for rows in by_group(speakers).values():
        statistics = SpeakerStatistics.of([features[i] for i in rows])
        for i in rows:
            out[i] = model.normalise(features[i], statistics)
    return out
