"""Speaker embeddings: one 256-number voice print per short window of speech, so that windows of the same person lie
close together and windows of two people apart (what :mod:`alignment.diarization` clusters).

The network is the GE2E speaker encoder (Wan et al. 2018) as trained by Resemble AI: a 3-layer LSTM over 40-channel
mel power spectra, its last hidden state through a linear layer, ReLU and L2 normalisation. It is written here; its
trained weights are read from the file that PyPI's ``resemblyzer`` package (Apache-2.0) ships inside itself,
``resemblyzer/pretrained.pt``. Nothing of resemblyzer is imported, so its ``webrtcvad`` dependency (no wheel on PyPI)
is not needed: ``pip install --no-deps resemblyzer==0.1.4``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path

import librosa
import numpy as np
import torch
from torch import nn

from encoders import SAMPLE_RATE  # 16 kHz: the rate the encoder was trained at, and the rate decoding gives
from encoders.loading import ModelNotFoundError, choose_model

SPEAKER_ENV = "FUSION_SPEAKER_MODEL"  # a path to another copy of pretrained.pt
WEIGHTS_PACKAGE = "resemblyzer"  # the PyPI package whose wheel holds the weights
WEIGHTS_FILE = "pretrained.pt"  # inside that package's folder

MEL_CHANNELS = 40  # mel bands of the input spectrum, as trained
MEL_WINDOW = 400  # samples (25 ms): the STFT window the encoder was trained on
MEL_HOP = 160  # samples (10 ms): one spectrum frame every 10 ms, as trained
HIDDEN = 256  # LSTM width, and the embedding's size
LAYERS = 3  # stacked LSTM layers
TARGET_DBFS = -30.0  # dB full scale: the speech level the training audio was brought to; the input is a power
# spectrum (not a log), so the network's input grows with loudness and quiet speech is raised to this level first

WINDOW_FRAMES = 160  # spectrum frames (1.6 s) per window: the length of the partial utterances it was trained on
WINDOW_SECONDS = WINDOW_FRAMES * MEL_HOP / SAMPLE_RATE
# A new window every 0.4 s: each moment of a long stretch of speech is seen by four windows, and a change of speaker
# inside it is placed to within about 0.2 s (half a hop), under the usual 0.25 s scoring collar.
HOP_FRAMES = 40
HOP_SECONDS = HOP_FRAMES * MEL_HOP / SAMPLE_RATE
# Speech shorter than this (0.5 s) gets no window of its own: under half a second of voice (a word or two) gives a
# print too noisy to place; alignment.diarization labels such bits from the windows next to them.
MIN_FRAMES = 50
BATCH = 64  # windows per forward pass: 64 x 160 x 40 floats in, a few MB of LSTM state; bounds memory on long audio


class SpeakerModelNotFoundError(ModelNotFoundError):
    """The speaker encoder's weights file is missing or unreadable."""

    def __init__(self, path: str, reason: str):
        self.what = "speaker encoder"
        self.requested = path
        RuntimeError.__init__(
            self,
            f"speaker encoder weights '{path}' could not be loaded: {reason}. They ship inside PyPI's "
            f"'{WEIGHTS_PACKAGE}' package as {WEIGHTS_PACKAGE}/{WEIGHTS_FILE}: install it with "
            f"`pip install --no-deps {WEIGHTS_PACKAGE}==0.1.4` (its own dependencies are not needed), or point "
            f"{SPEAKER_ENV}=/path/to/{WEIGHTS_FILE} at a copy.",
        )


def weights_path(explicit: str | os.PathLike | None = None) -> str:
    """Where the weights are: the argument, else $FUSION_SPEAKER_MODEL, else the installed resemblyzer's file.

    Found by importlib without importing resemblyzer (its __init__ imports webrtcvad). Raises
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


class SpeakerNetwork(nn.Module):
    """(batch, frames, MEL_CHANNELS) mel power spectra -> (batch, HIDDEN) L2-normalised speaker embeddings."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(MEL_CHANNELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # hidden: (LAYERS, batch, HIDDEN), the state after the last frame
        embedding = torch.relu(self.linear(hidden[-1]))
        return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)


def mel_power(audio: np.ndarray) -> np.ndarray:
    """(samples,) float32 16 kHz -> (1 + samples // MEL_HOP, MEL_CHANNELS) float32 mel power spectrum; frame i is
    centred on sample i * MEL_HOP (Hann window of MEL_WINDOW samples, Slaney mel bands from 0 to 8 kHz)."""
    mel = librosa.feature.melspectrogram(
        y=np.ascontiguousarray(audio, dtype=np.float32),
        sr=SAMPLE_RATE,
        n_fft=MEL_WINDOW,
        hop_length=MEL_HOP,
        n_mels=MEL_CHANNELS,
    )
    return mel.T.astype(np.float32)


def speech_gain(piece: np.ndarray) -> float:
    """The factor (>= 1) that brings a stretch of speech up to TARGET_DBFS; louder speech is left as is, as in
    training. Each stretch gets its own: on two-person recordings of RAVDESS actors 01-10 of one sex (the number of
    speakers given), that cut the speech given to the wrong person from 22% to 8%, against one factor for the whole
    recording, which leaves a whispered take and a shouted one of the same person too far apart
    (benchmarks/speakers.py)."""
    mean_square = float(np.square(piece, dtype=np.float64).mean()) if len(piece) else 0.0
    if mean_square == 0:
        return 1.0
    return float(max(1.0, 10 ** ((TARGET_DBFS - 10 * np.log10(mean_square)) / 20)))


class SpeakerEncoder:
    """Speaker embeddings of sliding windows over a recording.

    encoder = SpeakerEncoder()
    embeddings, centres = encoder.embed(audio)                 # (n_windows, 256), (n_windows,) seconds
    embeddings, starts, ends = encoder.windows(audio, spans)   # windows inside given speech spans only

    Runs on the torch threads the caller set (it never changes them).
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        path = weights_path(weights)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = checkpoint["model_state"] if "model_state" in checkpoint else checkpoint
            # The file also holds the GE2E loss's similarity scale and bias, which inference does not use.
            state = {k: v for k, v in state.items() if not k.startswith("similarity_")}
            network = SpeakerNetwork()
            network.load_state_dict(state)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as error:
            raise SpeakerModelNotFoundError(path, f"not a speaker encoder state dict ({error})") from error
        self.device = torch.device(device)
        self.network = network.eval().to(self.device)
        self.path = path

    def embed(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(samples,) float32 mono 16 kHz -> ((n_windows, 256) float32 embeddings, (n_windows,) window centres in
        seconds). Windows of WINDOW_SECONDS every HOP_SECONDS over the whole recording, the last one ending at its
        end; a recording shorter than a window is one shorter window (none under MIN_FRAMES)."""
        embeddings, starts, ends = self.windows(audio, [(0.0, len(audio) / SAMPLE_RATE)])
        return embeddings, (starts + ends) / 2

    def windows(self, audio: np.ndarray, spans: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embeddings of windows that lie inside the given spans (seconds, e.g. stretches of speech), none crossing
        from one span to the next.

        Returns (n_windows, 256) float32 embeddings and (n_windows,) start and end times in seconds. A span longer
        than a window gets windows every HOP_SECONDS and one more ending at its end; a shorter one is one window of
        its own length; spans under MIN_FRAMES get none. Spectra are computed one span at a time and windows run in
        batches of BATCH, so memory stays bounded on long recordings.
        """
        full: list[np.ndarray] = []  # (WINDOW_FRAMES, MEL_CHANNELS) spectra, run BATCH at a time
        full_rows: list[int] = []  # their rows in the output
        out: list[np.ndarray | None] = []
        starts: list[float] = []
        ends: list[float] = []
        for start, end in spans:
            first = max(0, int(round(start * SAMPLE_RATE)))
            piece = audio[first : int(round(end * SAMPLE_RATE))]
            piece = piece * np.float32(speech_gain(piece))
            frames = len(piece) // MEL_HOP  # whole 10 ms frames inside the span
            if frames < MIN_FRAMES:
                continue
            mel = mel_power(piece)[:frames]
            t0 = first / SAMPLE_RATE
            if frames < WINDOW_FRAMES:  # one shorter window, run alone as its length is its own
                out.append(self._run([mel])[0])
                starts.append(t0)
                ends.append(t0 + frames * MEL_HOP / SAMPLE_RATE)
                continue
            offsets = list(range(0, frames - WINDOW_FRAMES + 1, HOP_FRAMES))
            if offsets[-1] != frames - WINDOW_FRAMES:
                offsets.append(frames - WINDOW_FRAMES)  # the span's end gets a window too
            for offset in offsets:
                full.append(mel[offset : offset + WINDOW_FRAMES])
                full_rows.append(len(out))
                out.append(None)
                starts.append(t0 + offset * MEL_HOP / SAMPLE_RATE)
                ends.append(starts[-1] + WINDOW_SECONDS)
                if len(full) == BATCH:
                    self._fill(out, full, full_rows)
        self._fill(out, full, full_rows)
        if not out:
            return np.zeros((0, HIDDEN), np.float32), np.zeros(0), np.zeros(0)
        return np.stack(out), np.array(starts), np.array(ends)

    def _fill(self, out: list, mels: list[np.ndarray], rows: list[int]) -> None:
        """Run the waiting windows and put their embeddings in their rows; empties both lists."""
        if mels:
            for row, embedding in zip(rows, self._run(mels)):
                out[row] = embedding
        mels.clear()
        rows.clear()

    @torch.inference_mode()
    def _run(self, mels: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack(mels)).to(self.device)  # (batch, frames, MEL_CHANNELS)
        return self.network(x).float().cpu().numpy()


# Nuisance attribute projection (Solomonoff et al., 2005): the directions in which one person's voice prints vary
# most from take to take (here, mostly the emotion acted) are removed before voice prints are compared, so that
# one voice's angry and sad takes look less like two people. The directions are the top eigenvectors of the
# within-speaker covariance of window embeddings of RAVDESS actors 01-10 and the 9 nEMO speakers, fitted by
# benchmarks/speaker_nuisance.py, which also chose their number on recordings of actors 01-10 only.
NUISANCE_FILE = Path(__file__).with_name("speaker_nuisance.safetensors")


@functools.cache
def nuisance_directions(path: str | os.PathLike = NUISANCE_FILE) -> np.ndarray:
    """(256, k) orthonormal directions of within-speaker variation, as benchmarks/speaker_nuisance.py stored them."""
    from safetensors.numpy import load_file

    return load_file(str(path))["directions"]


def remove_nuisance(embeddings: np.ndarray, directions: np.ndarray | None = None) -> np.ndarray:
    """(n, 256) voice prints less their part along the nuisance directions, L2-normalised again."""
    directions = nuisance_directions() if directions is None else directions
    kept = embeddings - (embeddings @ directions) @ directions.T
    return (kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)).astype(np.float32)
