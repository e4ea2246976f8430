"""Audio: a log-mel spectrogram fed to a spectrogram CNN that emits one token every 40 ms.

The spectrogram is librosa's ``feature.melspectrogram`` (centred frames padded with zeros, a periodic Hann window,
power 2, Slaney mel filters from 0 Hz to the Nyquist frequency), computed here in numpy so that a cold start does
not import librosa's feature and filter modules; tests/test_audio.py holds the two within 1e-4 in the log.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from encoders import SAMPLE_RATE

N_FFT = 400  # samples: 25 ms analysis window
HOP_LENGTH = 160  # samples: 10 ms between spectrogram frames
N_MELS = 64  # mel bands between 0 Hz and the Nyquist frequency
LOG_FLOOR = 1e-10  # power floor before the log, so digital silence stays finite
FRAME_SECONDS = HOP_LENGTH / SAMPLE_RATE  # 0.01 s per spectrogram frame
TOKEN_STRIDE = 4  # spectrogram frames per audio token: the CNN pools time by 2 twice
TOKEN_SECONDS = TOKEN_STRIDE * FRAME_SECONDS  # 0.04 s per audio token


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram of a mono 16 kHz waveform.

    audio: (samples,) float32 in [-1, 1]
    returns: (n_frames, N_MELS) float32, natural-log power; frame i is centred at i * FRAME_SECONDS
    """
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got {audio.shape}")
    padded = np.pad(np.asarray(audio, dtype=np.float32), N_FFT // 2)
    n_frames = 1 + (len(padded) - N_FFT) // HOP_LENGTH
    frames = padded[np.arange(N_FFT)[None] + HOP_LENGTH * np.arange(n_frames)[:, None]]  # (n_frames, N_FFT)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return np.log(np.maximum(power @ mel_filters().T, LOG_FLOOR)).astype(np.float32)


@functools.cache
def mel_filters() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) float32 Slaney-normalised triangular mel filters over 0 Hz .. SAMPLE_RATE / 2 on
    the Slaney mel scale (linear below 1 kHz, logarithmic above): librosa.filters.mel's defaults."""
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, freqs)
    weights = np.maximum(0, np.minimum(-ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return weights.astype(np.float32)


_MEL_STEP_HZ = 200.0 / 3  # the Slaney scale: linear below _MEL_BREAK_HZ, logarithmic above
_MEL_BREAK_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz):
    hz = np.asarray(hz, np.float64)
    log_part = _MEL_BREAK_HZ / _MEL_STEP_HZ + np.log(np.maximum(hz, 1e-10) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_BREAK_HZ, log_part, hz / _MEL_STEP_HZ)


def _mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    brk = _MEL_BREAK_HZ / _MEL_STEP_HZ
    return np.where(mel >= brk, _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (mel - brk)), _MEL_STEP_HZ * mel)


class SpectrogramCNN(nn.Module):
    """2-D CNN over a log-mel spectrogram: (B, T, N_MELS) -> (B, ceil(T / 4), dim) tokens.

    Padded frames are zeroed after every convolution, so they look exactly like the convolutions' own zero
    padding: a clip gives the same tokens alone and batched with longer clips.
    """

    def __init__(self, *, dim: int = 128, channels: tuple[int, int, int] = (16, 32, 64), strided: bool = False):
        super().__init__()
        c1, c2, c3 = channels
        self.input_norm = nn.BatchNorm2d(1)
        self.blocks = nn.ModuleList(
            [
                ConvBlock(1, c1, pool=(2, 2), strided=strided),  # time /2, mel 64 -> 32
                ConvBlock(c1, c2, pool=(2, 2), strided=strided),  # time /4, mel 32 -> 16
                ConvBlock(c2, c3, pool=(1, 2), strided=strided),  # mel 16 -> 8
            ]
        )
        self.project = nn.Linear(c3 * (N_MELS // 8), dim)
        self.dim = dim

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel: (B, T, N_MELS) log-mel; mask: (B, T) bool, True on real frames.

        returns tokens (B, T', dim) and their mask (B, T') with T' = ceil(T / TOKEN_STRIDE)
        """
        # Per-recording mean normalisation of each mel band over the real frames: removes the channel and much of
        # the speaker's spectral tilt, which a speaker-independent model should not rely on.
        real = mask[..., None].to(mel.dtype)
        band_mean = (mel * real).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp(min=1)
        mel = (mel - band_mean) * real
        pad = -mel.shape[1] % TOKEN_STRIDE
        mel = nn.functional.pad(mel, (0, 0, 0, pad))
        mask = nn.functional.pad(mask, (0, pad))
        x = self.input_norm(rearrange(mel, "b t f -> b 1 t f")) * rearrange(mask, "b t -> b 1 t 1")
        for block in self.blocks:
            x, mask = block(x, mask)
        tokens = self.project(rearrange(x, "b c t f -> b t (c f)"))
        return tokens * mask[..., None], mask


class ConvBlock(nn.Module):
    """A 3x3 convolution with batch norm and GELU, then max-pooling; padded time steps are kept at zero.

    One convolution per block keeps training affordable on a CPU (about 55 M multiply-adds per second of audio
    for the three blocks); RAVDESS-sized corpora do not need more capacity. strided: the convolution itself steps
    by `pool` instead of being max-pooled after, so it computes only the outputs that pooling would keep: a
    quarter of them in the first two blocks, half in the third (the voice expert uses it).
    """

    def __init__(self, c_in: int, c_out: int, *, pool: tuple[int, int], strided: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=pool if strided else 1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)
        self.pool = nn.Identity() if strided else nn.MaxPool2d(pool)
        self.time_pool = pool[0]
        self.strided = strided

    def fold_batch_norm(self) -> None:
        """Inference only: the batch norm folded into the convolution (encoders.runtime.fold_batch_norms)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv, self.norm = fuse_conv_bn_eval(self.conv.eval(), self.norm.eval()), nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, T, F); mask: (B, T) -> (B, C', T / time_pool, F / mel_pool) and the pooled mask."""
        if not self.strided:
            x = nn.functional.gelu(self.norm(self.conv(x))) * rearrange(mask, "b t -> b 1 t 1")
        # A pooled step is real if any frame under it was.
        mask = rearrange(mask, "b (t p) -> b t p", p=self.time_pool).any(-1)
        if self.strided:
            return nn.functional.gelu(self.norm(self.conv(x))) * rearrange(mask, "b t -> b 1 t 1"), mask
        return self.pool(x) * rearrange(mask, "b t -> b 1 t 1"), mask


class VoiceEncoder(nn.Module):
    """The voice as one token stream, every 40 ms: Whisper encoder states beside spectrogram CNN tokens.

    Either part can be switched off (use_cnn / use_whisper) to measure what it contributes. Whisper states come
    every 20 ms (encoders.whisper_states); each pair is averaged onto the CNN's 40 ms token grid, where both have
    their centres at (k + 0.5) * TOKEN_SECONDS, and a token is the two concatenated: dim = whisper_dim + cnn_dim.
    The states are not projected: pooled over a segment, their statistics are what a linear probe reads best
    (benchmarks/results/whisper_blocks.md), and the expert's head keeps that reading open.
    """

    def __init__(self, *, cnn_dim: int = 128, whisper_dim: int = 384, use_cnn: bool = True, use_whisper: bool = True):
        super().__init__()
        if not (use_cnn or use_whisper):
            raise ValueError("the voice encoder needs the spectrogram CNN, the Whisper states, or both")
        self.cnn = SpectrogramCNN(dim=cnn_dim, strided=True) if use_cnn else None
        self.use_whisper = use_whisper
        self.dim = (whisper_dim if use_whisper else 0) + (cnn_dim if use_cnn else 0)

    def forward(
        self, mel: torch.Tensor, mel_mask: torch.Tensor, states: torch.Tensor, states_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel: (B, T, N_MELS), mel_mask: (B, T); states: (B, S, whisper_dim), states_mask: (B, S), S ~ T / 2.

        returns tokens (B, T', dim) and mask (B, T') with T' = ceil(T / TOKEN_STRIDE), zero under the mask
        """
        n_tokens = -(-mel.shape[1] // TOKEN_STRIDE)
        mask = nn.functional.pad(mel_mask, (0, -mel.shape[1] % TOKEN_STRIDE))
        mask = rearrange(mask, "b (t p) -> b t p", p=TOKEN_STRIDE).any(-1)
        parts = []
        if self.use_whisper:
            pairs, pairs_mask = _pairs_on_grid(states, states_mask, n_tokens)
            parts.append(pairs * pairs_mask[..., None])
        if self.cnn is not None:
            cnn_tokens, mask = self.cnn(mel, mel_mask)
            parts.append(cnn_tokens.to(parts[0].dtype) if parts else cnn_tokens)
        return torch.cat(parts, -1) * mask[..., None], mask


def _pairs_on_grid(states: torch.Tensor, mask: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, D) 20 ms states -> (B, n_tokens, D) means of the real states in each 40 ms pair, cut or zero-padded."""
    states = nn.functional.pad(states * mask[..., None], (0, 0, 0, -states.shape[1] % 2))
    mask = nn.functional.pad(mask, (0, -mask.shape[1] % 2))
    sums = rearrange(states, "b (t p) d -> b t p d", p=2).sum(2)
    counts = rearrange(mask, "b (t p) -> b t p", p=2).sum(2)
    pairs, pairs_mask = sums / counts.clamp(min=1)[..., None], counts > 0
    extra = n_tokens - pairs.shape[1]
    if extra >= 0:
        return nn.functional.pad(pairs, (0, 0, 0, extra)), nn.functional.pad(pairs_mask, (0, extra))
    return pairs[:, :n_tokens], pairs_mask[:, :n_tokens]
