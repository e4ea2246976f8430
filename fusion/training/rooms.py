"""Rooms and phones: waveform degradations that make studio speech sound as if recorded elsewhere.

The acted corpora are clean close-talk recordings; users' interviews and the in-the-wild corpus come through rooms,
phone microphones, telephone lines and compressed uploads. Each function takes 16 kHz mono float32 audio and a
numpy Generator and returns audio of the same length and rate (speed perturbation alone changes the length, as a
tempo change must); :func:`degrade` draws a chain of them per copy. The Whisper states of a degraded copy are
computed from its waveform (the speech cache stores each copy as its own entry), so the voice expert trains on
what the encoder makes of the degraded sound, not on an approximation in the feature domain.
"""

from __future__ import annotations

import io

import numpy as np
from scipy import signal

from encoders import SAMPLE_RATE

ROOMS_VERSION = 1  # bump when a degradation changes: part of the speech cache's key for degraded copies
RT60_S = (0.2, 0.8)  # reverberation time: a furnished office to a bare meeting room
DIRECT_TO_REVERB_DB = (0.0, 10.0)  # energy of the direct path over the reverberant tail
NOISE_SNR_DB = (5.0, 25.0)  # speech power over noise power: a noisy street to a quiet room
NOISE_COLOURS = (0.0, 1.0, 2.0)  # spectral slope exponent: white, pink (1/f), brown (1/f^2)
TELEPHONE_BAND_HZ = (300.0, 3400.0)  # the narrow-band telephone channel (ITU-T G.712)
CODEC_BITRATES = (8_000, 12_000, 16_000)  # Opus bit rates of low-bandwidth calls and voice messages
SPEED_RANGE = (0.9, 1.1)  # tempo factor (resampling: pitch moves with it, as in Ko et al. 2015)


def reverberate(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room impulse response: a direct path and an exponentially decaying noise tail
    (energy down 60 dB after RT60); the level of the input is kept."""
    rt60 = rng.uniform(*RT60_S)
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(len(t)) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078: -60 dB of energy at rt60
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # the first reflections arrive a few ms after the direct sound
    ratio_db = rng.uniform(*DIRECT_TO_REVERB_DB)
    tail *= np.sqrt(10 ** (-ratio_db / 10) / max(np.sum(tail**2), 1e-12))
    impulse = np.concatenate([[1.0], tail[1:]])
    wet = signal.fftconvolve(audio.astype(np.float64), impulse)[: len(audio)]
    return _same_level(wet, audio)


def add_noise(audio: np.ndarray, rng: np.random.Generator, *, snr_db: float | None = None) -> np.ndarray:
    """Add coloured Gaussian noise (white, pink or brown) at an SNR drawn from NOISE_SNR_DB (or snr_db)."""
    snr_db = rng.uniform(*NOISE_SNR_DB) if snr_db is None else snr_db
    colour = rng.choice(NOISE_COLOURS)
    spectrum = np.fft.rfft(rng.standard_normal(len(audio)))
    frequencies = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    spectrum *= 1.0 / np.maximum(frequencies, 20.0) ** (colour / 2)  # power slope f^-colour
    noise = np.fft.irfft(spectrum, len(audio))
    power = np.mean(audio.astype(np.float64) ** 2)
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / max(np.mean(noise**2), 1e-20))
    return (audio + noise).astype(np.float32)


def telephone(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A narrow-band telephone line: band-pass TELEPHONE_BAND_HZ, 8 kHz sampling, 8-bit mu-law, back to 16 kHz."""
    del rng  # deterministic
    band = signal.butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    narrow = signal.resample_poly(signal.sosfiltfilt(band, audio.astype(np.float64)), 1, 2)
    peak = max(np.abs(narrow).max(), 1e-9)
    mu = 255.0
    x = narrow / peak
    coded = np.round(np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) * 127) / 127
    decoded = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu * peak
    return _fit_length(signal.resample_poly(decoded, 2, 1), len(audio)).astype(np.float32)


def codec(audio: np.ndarray, rng: np.random.Generator, *, bitrate: int | None = None) -> np.ndarray:
    """Encode with Opus at a low bit rate (CODEC_BITRATES, or bitrate) and decode again (PyAV, in memory)."""
    import av

    bitrate = int(rng.choice(CODEC_BITRATES)) if bitrate is None else bitrate
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(np.clip(audio, -1, 1).astype(np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pieces = [
            out.to_ndarray().reshape(-1) for decoded in container.decode(audio=0) for out in resampler.resample(decoded)
        ]
    return _fit_length(np.concatenate(pieces), len(audio)).astype(np.float32)


def change_speed(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Play faster or slower by a factor from SPEED_RANGE (length divided by it; pitch moves with it)."""
    factor = rng.uniform(*SPEED_RANGE)
    up = 100
    down = round(up * factor)
    return signal.resample_poly(audio.astype(np.float64), up, down).astype(np.float32)


def degrade(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One random room-and-phone chain -> (audio, the names of what was applied, in order): speed (p 0.3), a room
    (p 0.5), then a telephone line or a low-rate codec (p 0.25 each), then noise (p 0.6). At least one is applied."""
    applied: list[str] = []
    while not applied:
        if rng.random() < 0.3:
            audio, applied = change_speed(audio, rng), [*applied, "speed"]
        if rng.random() < 0.5:
            audio, applied = reverberate(audio, rng), [*applied, "room"]
        channel = rng.random()
        if channel < 0.25:
            audio, applied = telephone(audio, rng), [*applied, "telephone"]
        elif channel < 0.5:
            audio, applied = codec(audio, rng), [*applied, "codec"]
        if rng.random() < 0.6:
            audio, applied = add_noise(audio, rng), [*applied, "noise"]
    return np.clip(audio, -1.0, 1.0).astype(np.float32), applied


def _same_level(audio: np.ndarray, reference: np.ndarray) -> np.ndarray:
    scale = np.sqrt(np.mean(reference.astype(np.float64) ** 2) / max(np.mean(audio**2), 1e-20))
    return (audio * scale).astype(np.float32)


def _fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    return audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))
