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
