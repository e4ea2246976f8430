"""Put the three modalities on one timeline: the output segments, who speaks when, and who is on camera."""

from alignment.timeline import DEFAULT_WINDOW_S, SEGMENT_MODES, Segment, make_segments

__all__ = ["DEFAULT_WINDOW_S", "SEGMENT_MODES", "Segment", "make_segments"]
