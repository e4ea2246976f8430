"""Voice activity detection (encoders.vad) on real speech and on noise."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.vad import FRAME_SECONDS, HANGOVER_SECONDS, SpeechDetector, speech_at
from fusion.media.decoding import decode


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


def test_speech_is_found_in_a_spoken_sentence_and_not_in_noise(detector, ravdess_clips):
    audio = decode(ravdess_clips[0]).audio
    detector.reset()
    speech = detector(audio)
    assert len(speech) == len(audio) // 512
    assert 0.3 < speech.mean() < 0.95  # a sentence with silence before and after it
    noise = (np.random.default_rng(0).standard_normal(10 * 16_000) * 0.1).astype(np.float32)
    detector.reset()
    assert detector(noise).mean() < 0.05


def test_pieces_of_a_recording_give_what_the_whole_gives(detector, ravdess_clips):
    audio = decode(ravdess_clips[0]).audio
    detector.reset()
    whole = detector(audio)
    detector.reset()
    cut = 512 * 40  # a cut on a frame boundary: the state carries over, so the frames agree
    pieces = np.concatenate([detector(audio[:cut]), detector(audio[cut:])])
    assert (pieces == whole).mean() > 0.97


def test_speech_at_widens_speech_by_the_hangover():
    speech = np.zeros(100, bool)
    speech[50:60] = True  # 1.6 s to 1.92 s after the start
    start = 10.0
    first, last = start + 50 * FRAME_SECONDS, start + 60 * FRAME_SECONDS
    times = np.array([first - HANGOVER_SECONDS - 0.01, first - HANGOVER_SECONDS + 0.01, first + 0.1, last + 0.19,
                      last + 0.21, 0.0])  # fmt: skip
    assert speech_at(times, speech, start).tolist() == [False, True, True, True, False, False]
    assert not speech_at(times, np.zeros(100, bool), start).any()
