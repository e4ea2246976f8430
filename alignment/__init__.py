"""Put the three modalities on one timeline: output segments, token streams with times and masks."""

from alignment.timeline import (
    DEFAULT_WINDOW_S,
    SEGMENT_MODES,
    PaddedStreams,
    Segment,
    Stream,
    in_segments,
    make_segments,
    near_in_time,
    pad_streams,
    segment_index,
)

__all__ = [
    "DEFAULT_WINDOW_S",
    "SEGMENT_MODES",
    "PaddedStreams",
    "Segment",
    "Stream",
    "in_segments",
    "make_segments",
    "near_in_time",
    "pad_streams",
    "segment_index",
]
