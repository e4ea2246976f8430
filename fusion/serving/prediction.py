"""The result of predicting one recording, and its one serialisation.

:meth:`Prediction.segment_rows` turns the timeline into plain records; ``fusion predict --format json``
(:meth:`Prediction.to_dict`) and the segments table of ``fusion score`` (:mod:`fusion.serving.batch`) are both
written from them, so the two say the same of every segment.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Prediction:
    """The emotion timeline of one recording.

    timeline: one row per segment with columns start, end (seconds), text, face_present (share of sampled
        frames with a face; NaN without video), one probability column per emotion, label (top emotion) and
        modalities (comma-separated, those with a token inside the segment). A segment with no modality at
        all has NaN probabilities and an empty label.
    summary: {"probabilities": {emotion: p}, "label": str, "modalities": [...]}, the duration-weighted mean
        over the predicted segments.
    damaged: (start, end) seconds of the recording that could not be decoded (damaged packets, skipped; audio
        there is silence, and no frame was sampled from them); empty for an intact file.
    """

    file: str
    duration: float
    labels: tuple[str, ...]
    timeline: pd.DataFrame
    summary: dict
    timings: dict[str, float] = field(default_factory=dict)
    damaged: list[tuple[float, float]] = field(default_factory=list)

    def segment_rows(self) -> list[dict]:
        """One plain record per segment, the timeline's columns in order (start, end, text, face_present, one
        probability per label, label, modalities): NaN becomes None, so that every record is valid JSON, and
        modalities stays the comma-separated string ("" where no modality has anything)."""
        rows = []
        for row in self.timeline.to_dict("records"):
            row = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            rows.append(row | {"modalities": row["modalities"] or ""})
        return rows

    def to_dict(self) -> dict:
        """file, duration, segments (from :meth:`segment_rows`, with the probabilities under one key, modalities
        as a list and no label as None), summary, damaged and timings."""
        segments = [
            {
                "start": row["start"],
                "end": row["end"],
                "text": row["text"],
                "modalities": row["modalities"].split(",") if row["modalities"] else [],
                "face_present": row["face_present"],
                "probabilities": {e: row[e] for e in self.labels},
                "label": row["label"] or None,
            }
            for row in self.segment_rows()
        ]
        return {
            "file": self.file,
            "duration": self.duration,
            "segments": segments,
            "summary": self.summary,
            "damaged": [list(span) for span in self.damaged],
            "timings": self.timings,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self, path: str | os.PathLike | None = None) -> str | None:
        """The timeline as CSV: written to path, or returned as a string when path is None."""
        return self.timeline.to_csv(path, index=False, float_format="%.6g")

    def plot(self, *, path: str | os.PathLike | None = None, title: str | None = None):
        """A matplotlib Figure of the timeline (see :func:`fusion.serving.plot.plot_timeline`); saved to path when
        given."""
        from fusion.serving.plot import plot_timeline  # matplotlib loads only when a plot is asked for

        return plot_timeline(self, path=path, title=title)
