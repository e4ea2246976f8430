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


def test_log_mel_is_librosas(shared):
    """The numpy log-mel is librosa's melspectrogram with the same settings (what the training caches were made
    with), on real speech, noise and a clip shorter than one window."""
    import librosa

    from encoders.audio import HOP_LENGTH, LOG_FLOOR, N_FFT, mel_filters

    speech = decode(next((shared / "data/ravdess-speech-16k/Actor_02").glob("*.flac"))).audio
    noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.1).astype(np.float32)
    reference = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)
    assert np.abs(mel_filters() - reference).max() < 1e-7
    for audio in (speech, noise):
        expected = librosa.feature.melspectrogram(
            y=audio, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=N_MELS, power=2.0
        )
        np.testing.assert_allclose(log_mel(audio), np.log(np.maximum(expected, LOG_FLOOR)).T, atol=1e-4)
    assert log_mel(speech[:300]).shape == (2, N_MELS)  # shorter than a window: centred frames, zero-padded


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
