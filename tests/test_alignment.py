"""Timeline invariants: segments partition the recording, every token lands in one segment, masks match presence."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from alignment import Segment, make_segments


def utterance(start: float, end: float, text: str = "words") -> SimpleNamespace:
    return SimpleNamespace(start=start, end=end, text=text)


def assert_partition(segments: list[Segment], duration: float) -> None:
    assert segments[0].start == 0.0
    assert math.isclose(segments[-1].end, duration)
    for a, b in zip(segments[:-1], segments[1:]):
        assert a.end == b.start
    assert all(s.end > s.start for s in segments)


@pytest.mark.parametrize(
    "utterances, duration",
    [
        ([], 7.3),
        ([utterance(0.9, 2.4)], 3.3),
        ([utterance(0.3, 1.5), utterance(1.8, 2.5), utterance(5.0, 6.0)], 9.0),
        ([utterance(2.0, 3.0), utterance(2.5, 4.0)], 4.0),  # overlapping utterances
        ([utterance(0.0, 12.0)], 10.0),  # an utterance running past the end
    ],
)
def test_segments_partition_the_recording(utterances, duration):
    segments = make_segments(utterances, duration)
    assert_partition(segments, duration)
    for t in np.linspace(0, duration, 501):
        assert sum(s.start <= t < s.end for s in segments) == 1 or t == duration, "every time in exactly one"


def test_utterances_keep_their_text_and_pauses_become_windows():
    segments = make_segments([utterance(0.5, 2.0, "hello there"), utterance(6.0, 7.0, "bye")], 8.0, window_s=2.0)
    texts = [s.text for s in segments]
    assert texts[0] == "hello there" and "bye" in texts
    silent = [s for s in segments if not s.text]
    assert silent and all(1.0 <= s.end - s.start <= 3.0 for s in silent)


def test_window_mode_and_no_speech_give_fixed_windows():
    for segments in (
        make_segments([], 10.0, window_s=2.5),
        make_segments([utterance(1, 2)], 10.0, mode="window", window_s=2.5),
    ):
        assert [(s.start, s.end) for s in segments] == [(0.0, 2.5), (2.5, 5.0), (5.0, 7.5), (7.5, 10.0)]
    with pytest.raises(ValueError, match="segment mode"):
        make_segments([], 1.0, mode="sentences")
