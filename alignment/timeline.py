"""One timeline per recording: the output segments.

Times are seconds from the start of the recording. Segments partition [0, duration], so every moment of the
recording falls in exactly one segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

SEGMENT_MODES = ("utterance", "window")
DEFAULT_WINDOW_S = 2.0  # seconds: length of a fixed output window (silence, video-only input, or mode "window")
MIN_GAP_S = 1.0  # seconds: a pause between utterances shorter than this is split between its neighbours


class Timed(Protocol):
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Segment:
    """One output row of the timeline: [start, end) in seconds, with the words spoken in it."""

    start: float
    end: float
    text: str = ""


def make_segments(
    utterances: Sequence[Timed],
    duration: float,
    *,
    start: float = 0.0,
    mode: str = "utterance",
    window_s: float = DEFAULT_WINDOW_S,
) -> list[Segment]:
    """Partition [start, start + duration] into output segments (start: where a piece of a long recording begins).

    mode "utterance": Whisper's utterances become segments; pauses of at least MIN_GAP_S (and the whole
    recording when nothing is said) are cut into windows of about window_s; shorter pauses are split at their
    midpoint between the neighbouring utterances. mode "window": fixed windows of about window_s throughout.
    """
    if mode not in SEGMENT_MODES:
        raise ValueError(f"segment mode must be one of {SEGMENT_MODES}, got {mode!r}")
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    if duration <= 0:
        return []
    if start:
        relative = [Segment(u.start - start, u.end - start, u.text) for u in utterances]
        pieces = make_segments(relative, duration, mode=mode, window_s=window_s)
        return [Segment(s.start + start, s.end + start, s.text) for s in pieces]
    if mode == "window":
        return _windows(0.0, duration, window_s)

    spoken: list[Segment] = []
    for utterance in sorted(utterances, key=lambda u: u.start):
        start = max(0.0, float(utterance.start), spoken[-1].end if spoken else 0.0)
        end = min(float(duration), float(utterance.end))
        if end > start:
            spoken.append(Segment(start, end, utterance.text.strip()))

    segments: list[Segment] = []
    cursor = 0.0
    for utterance in spoken + [Segment(duration, duration)]:  # the sentinel closes the trailing pause
        gap = utterance.start - cursor
        if gap >= MIN_GAP_S or (not spoken and gap > 0):
            segments += _windows(cursor, utterance.start, window_s)
        elif gap > 0 and segments:
            middle = cursor + gap / 2
            segments[-1] = Segment(segments[-1].start, middle, segments[-1].text)
            utterance = Segment(middle, utterance.end, utterance.text)
        elif gap > 0:  # a short pause before the first utterance belongs to it
            utterance = Segment(cursor, utterance.end, utterance.text)
        if utterance.end > utterance.start:
            segments.append(utterance)
        cursor = utterance.end
    return segments


def _windows(start: float, end: float, window_s: float) -> list[Segment]:
    """[start, end] cut into equal windows of about window_s seconds (no sliver at the end)."""
    count = max(1, round((end - start) / window_s))
    bounds = [start + (end - start) * i / count for i in range(count)] + [end]
    return [Segment(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
