"""Room-and-phone degradations (fusion.training.rooms) on a real RAVDESS take: lengths and rates kept where they
should be, and each changes the signal by what it claims."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from fusion.media.decoding import decode
from fusion.training import rooms

TAKE = "data/ravdess-speech-16k/Actor_01/03-01-05-02-01-01-01.flac"  # angry, strong, actor 01


@pytest.fixture(scope="module")
def speech(shared) -> np.ndarray:
    return decode(shared / TAKE).audio


def band_share(audio: np.ndarray, low: float, high: float) -> float:
    """Share of the power between low and high Hz."""
    frequencies, power = signal.welch(audio, fs=16_000, nperseg=1024)
    inside = (frequencies >= low) & (frequencies < high)
    return float(power[inside].sum() / power.sum())


@pytest.mark.parametrize("degradation", [rooms.reverberate, rooms.add_noise, rooms.telephone, rooms.codec])
def test_a_degradation_keeps_length_and_type_and_changes_the_signal(speech, degradation):
    out = degradation(speech, np.random.default_rng(0))
    assert out.shape == speech.shape and out.dtype == np.float32
    difference = np.mean((out - speech) ** 2) / np.mean(speech**2)
    assert difference > 0.01  # at least -20 dB of change relative to the speech


def test_noise_is_added_at_the_snr_asked_for(speech):
    out = rooms.add_noise(speech, np.random.default_rng(1), snr_db=10.0)
    noise = out - speech
    assert 10 * np.log10(np.mean(speech**2) / np.mean(noise**2)) == pytest.approx(10.0, abs=0.1)


def test_the_telephone_line_removes_the_band_above_4_khz(speech):
    out = rooms.telephone(speech, np.random.default_rng(0))
    assert band_share(speech, 4000, 8000) > 0.005 and band_share(out, 4000, 8000) < 0.0005
    lag = np.argmax(np.correlate(out, speech, "full")) - (len(speech) - 1)
    assert abs(lag) <= 2  # zero-phase filtering: the words stay where they were


def test_reverberation_keeps_the_level_and_spreads_a_click_over_the_room(speech):
    out = rooms.reverberate(speech, np.random.default_rng(2))
    assert np.mean(out**2) == pytest.approx(np.mean(speech**2), rel=1e-3)
    click = np.zeros(32_000, np.float32)
    click[8_000] = 1.0
    heard = rooms.reverberate(click, np.random.default_rng(2))
    after = heard[8_000 + 32 :]  # more than 2 ms after the direct sound: reflections only
    # the direct path is at most 10 dB above the tail: at least 1/11 of the energy arrives late
    assert np.sum(after**2) / np.sum(heard**2) > 1 / 11 - 0.01 and np.abs(heard[:8_000]).max() < 1e-6


def test_speed_changes_the_length_by_the_tempo_factor(speech):
    out = rooms.change_speed(speech, np.random.default_rng(3))
    factor = len(speech) / len(out)
    assert rooms.SPEED_RANGE[0] - 0.01 <= factor <= rooms.SPEED_RANGE[1] + 0.01 and abs(factor - 1) > 0.001


def test_a_chain_is_reproducible_from_its_seed_and_names_what_it_applied(speech):
    first, applied = rooms.degrade(speech, np.random.default_rng(7))
    again, applied_again = rooms.degrade(speech, np.random.default_rng(7))
    assert applied and applied == applied_again and np.array_equal(first, again)
    assert set(applied) <= {"speed", "room", "telephone", "codec", "noise"}
    assert np.abs(first).max() <= 1.0


def test_the_speech_cache_keeps_each_degraded_copy_apart_and_the_same_every_time(shared, tmp_path):
    from fusion.training.voice import SpeechCache

    path = str(shared / TAKE)
    cache = SpeechCache(tmp_path, whisper_model=str(shared / "models/whisper/tiny.en.pt"))
    (original,), _ = cache.build([path], progress=False)
    (first,), report = cache.build([path], progress=False, copy=1)
    assert report.computed == 1
    (again,), report = SpeechCache(tmp_path / "other", whisper_model=cache.whisper_model).build(
        [path], progress=False, copy=1
    )
    assert report.computed == 1 and np.array_equal(first.states, again.states)  # drawn from the file and k alone
    (reloaded,), report = cache.build([path], progress=False, copy=1)
    assert report.loaded == 1 and np.array_equal(reloaded.mel, first.mel)
    (second,), _ = cache.build([path], progress=False, copy=2)
    assert not np.array_equal(first.mel, second.mel)
    assert original.states.shape[0] == first.states.shape[0] == 4 and not np.allclose(
        original.mel[: len(first.mel)], first.mel[: len(original.mel)]
    )
