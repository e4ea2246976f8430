"""One timeline per recording: output segments, and per modality a stream of tokens with times and masks.

Times are seconds from the start of the recording. Segments partition [0, duration], so every token of the
recording falls in exactly one segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

SEGMENT_MODES = ("utterance", "window")
DEFAULT_WINDOW_S = 2.0  # seconds: length of a fixed output window (silence, video-only input, or mode "window")
END_TOLERANCE_S = 1e-4  # seconds: a float32 time at the very end of a recording still belongs to it
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


def segment_index(times: torch.Tensor, segments: Sequence[Segment]) -> torch.Tensor:
    """(T,) token times -> (T,) long index of the segment holding each time; -1 outside every segment.

    Segments are half-open [start, end), except the last, which holds its end (within float32 rounding).
    """
    starts = torch.tensor([s.start for s in segments], dtype=torch.float64)
    ends = torch.tensor([s.end for s in segments], dtype=torch.float64)
    t = times.to(torch.float64)
    index = torch.searchsorted(starts, t, right=True) - 1
    inside = (index >= 0) & (t < ends[index.clamp(min=0)])
    if segments:
        inside |= (index == len(segments) - 1) & (t <= ends[-1] + END_TOLERANCE_S)
    return torch.where(inside, index, torch.full_like(index, -1))


@dataclass
class Stream:
    """One modality's tokens on the recording's timeline.

    values: (T, ...) token features (or encoder inputs such as face crops)
    times: (T,) float32 seconds, the moment each token describes
    mask: (T,) bool, True where the token is real (False: no face in that frame, padding)
    """

    values: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if not (len(self.values) == len(self.times) == len(self.mask)):
            raise ValueError(
                f"stream lengths differ: values {len(self.values)}, times {len(self.times)}, mask {len(self.mask)}"
            )

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def empty(cls, *feature_shape: int) -> Stream:
        return cls(torch.zeros(0, *feature_shape), torch.zeros(0), torch.zeros(0, dtype=torch.bool))

    def __getitem__(self, rows: slice | torch.Tensor) -> Stream:
        return Stream(self.values[rows], self.times[rows], self.mask[rows])

    def between(self, start: float, end: float) -> Stream:
        """The tokens with start <= time <= end."""
        return self[(self.times >= start) & (self.times <= end)]


@dataclass
class PaddedStreams:
    """A batch of streams of one modality, padded to the longest.

    values: (B, T, ...); times: (B, T) seconds; mask: (B, T) bool, False on padding and absent tokens
    """

    values: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> PaddedStreams:
        return PaddedStreams(self.values.to(device), self.times.to(device), self.mask.to(device))


def pad_streams(streams: Sequence[Stream]) -> PaddedStreams:
    """Stack streams of one modality into a padded batch; padding is zeros with mask False."""
    length = max((len(s) for s in streams), default=0)
    # An empty stream may not know its feature size (a still image has no text model): take a non-empty one's.
    shaped = next((s for s in streams if len(s)), streams[0])
    values = torch.zeros(len(streams), length, *shaped.values.shape[1:], dtype=shaped.values.dtype)
    times = torch.zeros(len(streams), length)
    mask = torch.zeros(len(streams), length, dtype=torch.bool)
    for row, stream in enumerate(streams):
        n = len(stream)
        if n:
            values[row, :n] = stream.values
        times[row, :n] = stream.times
        mask[row, :n] = stream.mask
    return PaddedStreams(values, times, mask)


def near_in_time(query_times: torch.Tensor, key_times: torch.Tensor, key_mask: torch.Tensor, window_s: float):
    """Which keys each query may attend to: real keys within window_s seconds of the query.

    query_times: (B, Tq); key_times: (B, Tk); key_mask: (B, Tk) -> (B, Tq, Tk) bool
    """
    distance = (query_times[:, :, None] - key_times[:, None, :]).abs()
    return (distance <= window_s) & key_mask[:, None, :]


def in_segments(times: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Which real tokens fall inside each row's segment (bounds included).

    times: (B, T); mask: (B, T); segments: (B, 2) start, end seconds -> (B, T) bool
    """
    start, end = segments[:, :1], segments[:, 1:]
    return mask & (times >= start) & (times <= end)
