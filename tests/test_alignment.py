"""Timeline invariants: segments partition the recording, every token lands in one segment, masks match presence."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alignment import Segment, Stream, in_segments, make_segments, near_in_time, pad_streams, segment_index


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
    times = torch.linspace(0, duration, 501)
    index = segment_index(times, segments)
    assert (index >= 0).all(), "every token time inside the recording falls in a segment"
    for t, i in zip(times.tolist(), index.tolist()):
        segment = segments[i]
        assert segment.start <= t <= segment.end + 1e-4


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


def test_padding_masks_match_presence():
    present = torch.tensor([True, False, True])
    streams = [Stream(torch.randn(3, 4), torch.tensor([0.1, 0.2, 0.3]), present), Stream.empty(4)]
    batch = pad_streams(streams)
    assert batch.values.shape == (2, 3, 4)
    assert batch.mask.tolist() == [present.tolist(), [False, False, False]]
    assert (batch.values[1] == 0).all()


def test_attention_window_and_segment_membership():
    query = torch.tensor([[0.0, 2.0]])
    keys = torch.tensor([[0.5, 1.5, 2.9, 5.0]])
    key_mask = torch.tensor([[True, True, False, True]])
    allowed = near_in_time(query, keys, key_mask, window_s=1.0)
    assert allowed.tolist() == [[[True, False, False, False], [False, True, False, False]]]
    inside = in_segments(keys, key_mask, torch.tensor([[1.0, 3.0]]))
    assert inside.tolist() == [[False, True, False, False]]
