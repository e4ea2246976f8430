"""Audio front end on real speech, and the spectrogram CNN's shapes and padding (tiny random init)."""

from __future__ import annotations

import numpy as np
import torch

from encoders.audio import FRAME_SECONDS, N_MELS, SAMPLE_RATE, TOKEN_SECONDS, SpectrogramCNN, log_mel
from fusion.media.decoding import decode


def test_log_mel_of_real_speech(shared):
    path = next((shared / "data/ravdess-speech-16k/Actor_01").glob("*.flac"))
    audio = decode(path).audio
    mel = log_mel(audio)
    assert mel.dtype == np.float32 and mel.shape[1] == N_MELS
    assert abs(len(mel) * FRAME_SECONDS - len(audio) / SAMPLE_RATE) < 0.02
    assert np.isfinite(mel).all()
    # Speech is louder than the quietest frames of the same recording by a wide margin.
    frame_energy = mel.mean(1)
    assert frame_energy.max() - frame_energy.min() > 5


def test_log_mel_of_digital_silence_is_finite():
    mel = log_mel(np.zeros(SAMPLE_RATE, dtype=np.float32))
    assert np.isfinite(mel).all() and mel.shape == (101, N_MELS)


def test_spectrogram_cnn_shapes_random_init():
    torch.manual_seed(0)
    cnn = SpectrogramCNN(dim=24).eval()
    mel = torch.randn(2, 103, N_MELS)
    mask = torch.ones(2, 103, dtype=torch.bool)
    mask[1, 41:] = False
    tokens, token_mask = cnn(mel, mask)
    assert tokens.shape == (2, 26, 24)  # one token per 40 ms, rounded up
    assert token_mask[0].all() and token_mask[1].sum() == 11
    assert (tokens[1, 11:] == 0).all()
    assert TOKEN_SECONDS == 4 * FRAME_SECONDS


def test_spectrogram_cnn_ignores_padding_random_init():
    torch.manual_seed(0)
    cnn = SpectrogramCNN(dim=24).eval()
    short = torch.randn(1, 40, N_MELS)
    alone, _ = cnn(short, torch.ones(1, 40, dtype=torch.bool))
    padded = torch.cat([short, torch.randn(1, 60, N_MELS) * 50], 1)
    mask = torch.zeros(1, 100, dtype=torch.bool)
    mask[0, :40] = True
    batched, _ = cnn(padded, mask)
    torch.testing.assert_close(batched[:, :10], alone, rtol=1e-5, atol=1e-6)
