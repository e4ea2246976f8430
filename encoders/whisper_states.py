"""Whisper encoder states as an audio representation: one vector every 20 ms, from a model pretrained on 680,000 hours.

The encoder of the Whisper model that transcribes the recording is run a second time on the audio, in windows of at
most 30 s, up to `blocks` of its residual blocks, and the states after the last of them are kept. Why not reuse the
states of the transcription: openai-whisper's ``transcribe`` pads every window to 30 s, moves its windows by
what it decoded and runs the encoder twice per window (decoding, then word alignment), all inside one call that
returns only text; its states cannot be taken out with their times without copying its decoding loop. Running
the first blocks on the unpadded audio instead costs little (measured in benchmarks/results/voice_expert) and gives
states whose times are exact.

Why unpadded: a 3 s clip padded to 30 s costs ten times the frames in the linear layers and a hundred times in
attention, for states of the same 3 s. Training examples (short clips) and long recordings (30 s windows of
real audio) are then encoded alike, each window seeing only real audio.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH, N_SAMPLES

from encoders import SAMPLE_RATE
from encoders.runtime import autocast

STATE_SECONDS = 2 * HOP_LENGTH / SAMPLE_RATE  # 0.02 s: Whisper's second convolution halves the 10 ms mel frame rate
WINDOW_SAMPLES = N_SAMPLES  # 30 s at 16 kHz: the longest input Whisper's positional embedding covers
DEFAULT_BLOCKS = 2  # residual blocks run: of tiny.en's 4, the states after the 2nd carry the most emotion (measured)


class WhisperStates:
    """The states after the first `blocks` encoder blocks of a loaded Whisper model, for audio of any length.

    model: a ``whisper.Whisper`` (e.g. the one :class:`encoders.asr.Transcriber` loaded: no second copy), or just its
        encoder, a ``whisper.model.AudioEncoder`` (e.g. read from a CTranslate2 model by :mod:`encoders.ct2_whisper`)
    bf16: run the blocks under bf16 autocast (else float32). Prediction asks for it: 3 blocks of tiny.en over 120 s
    of RAVDESS speech took 0.40 s against 0.84 s in float32 on this 2-core CPU with AVX512-BF16, the states within
    1.1% (mean absolute difference over mean magnitude), and the default model's label through fusion.predict was
    the same on 89 of 90 RAVDESS files, its probabilities within 0.038
    (benchmarks/results/default_model/bf16_inference.md). Training features (the speech cache) stay
    float32, as the shipped experts were trained on them.
    """

    def __init__(self, model, *, blocks: int = DEFAULT_BLOCKS, bf16: bool = False):
        self.encoder = getattr(model, "encoder", model)
        n_blocks = len(self.encoder.blocks)
        if not 1 <= blocks <= n_blocks:
            raise ValueError(f"blocks must be in 1..{n_blocks} for this Whisper model, got {blocks}")
        self.blocks = blocks
        self.bf16 = bf16
        self.dim: int = self.encoder.conv1.out_channels
        self.n_mels: int = self.encoder.conv1.in_channels

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @torch.inference_mode()
    def __call__(self, audio: np.ndarray, *, all_blocks: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(samples,) float32 mono 16 kHz -> states (n, dim) float32 and their centre times (n,) float64 seconds.

        State i covers [i, i + 1) * STATE_SECONDS of the audio; n = ceil(len(audio) / 320 - 1/2) or so (Whisper's
        mel drops the last 10 ms frame), 0 for audio shorter than one mel frame.
        all_blocks: return (blocks, n, dim), the states after each of the first `blocks` blocks (for measuring which
        block to use).
        """
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected (samples,) mono audio, got shape {audio.shape}")
        with autocast(self.device, cpu_bf16=True) if self.bf16 else contextlib.nullcontext():
            pieces = [
                self._window(audio[start : start + WINDOW_SAMPLES]) for start in range(0, len(audio), WINDOW_SAMPLES)
            ]
        pieces = [p for p in pieces if p.shape[1]]
        if not pieces:
            shape = (self.blocks, 0, self.dim) if all_blocks else (0, self.dim)
            return np.zeros(shape, np.float32), np.zeros(0)
        states = torch.cat(pieces, 1).float().cpu().numpy()  # (blocks, n, dim)
        times = (np.arange(states.shape[1]) + 0.5) * STATE_SECONDS
        return (states if all_blocks else states[-1]), times

    def _window(self, audio: np.ndarray) -> torch.Tensor:
        """At most 30 s of audio -> (blocks, n, dim) states after each block."""
        encoder = self.encoder
        if len(audio) < HOP_LENGTH + 1:  # shorter than one mel frame
            return torch.zeros(self.blocks, 0, self.dim)
        mel = whisper.log_mel_spectrogram(torch.from_numpy(audio), self.n_mels).to(self.device)
        x = torch.nn.functional.gelu(encoder.conv1(mel[None].to(encoder.conv1.weight.dtype)))
        x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)  # (1, n, dim)
        x = x + encoder.positional_embedding[: x.shape[1]].to(x.dtype)
        outputs = []
        for block in encoder.blocks[: self.blocks]:
            x = block(x)
            outputs.append(x[0])
        return torch.stack(outputs)
