"""One picture per recording: emotion probabilities over time, the top emotion as a band, the transcript below."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# One colour per canonical emotion, chosen to read as the emotion does in most charts (anger red, sadness blue).
COLOURS = {
    "anger": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "happiness": "#f2b701",
    "sadness": "#1f77b4",
    "surprise": "#17becf",
    "neutral": "#7f7f7f",
}
FALLBACK_COLOUR = "#2ca02c"  # a label outside the canonical seven (a checkpoint with its own label set)
TEXT_ROWS = 3  # transcript lines are staggered over this many rows so that neighbours overlap less
TEXT_CHARS = 60  # characters of a segment's text shown before it is cut with an ellipsis
INCHES_PER_MINUTE = 4.0  # figure width grows with the recording, between MIN_WIDTH and MAX_WIDTH inches
MIN_WIDTH, MAX_WIDTH = 10.0, 40.0
# The letter marked on a segment's band for the modality that moved its answer most (its largest attribution column)
MARKS = {"attribution_audio": "V", "attribution_text": "W", "attribution_video": "F"}


def plot_timeline(
    timeline: pd.DataFrame,
    labels: tuple[str, ...],
    duration: float,
    *,
    title: str,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Draw a prediction's timeline (fusion.serving.prediction.Prediction.plot); written to path (PNG, SVG, PDF by
    its suffix) when given.

    Top: one line per emotion, each segment's probability held over the segment (gaps where a segment had no
    modality). Middle: a band coloured by each segment's top emotion. Bottom: each segment's words at its time,
    after its speaker when the prediction has speakers.
    """
    edges = np.append(timeline["start"].to_numpy(), timeline["end"].to_numpy()[-1:]) if len(timeline) else None
    width = float(np.clip(duration / 60 * INCHES_PER_MINUTE, MIN_WIDTH, MAX_WIDTH))
    figure = Figure(figsize=(width, 5.5), layout="constrained")
    probabilities, band, words = figure.subplots(3, 1, sharex=True, height_ratios=[4, 0.4, 1.6])

    for label in labels:
        if edges is not None:
            colour = COLOURS.get(label, FALLBACK_COLOUR)
            probabilities.stairs(timeline[label].to_numpy(), edges, color=colour, linewidth=1.6, label=label)
    probabilities.set_ylim(0, 1)
    probabilities.set_ylabel("probability")
    probabilities.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    probabilities.grid(axis="y", alpha=0.3)
    probabilities.set_title(title, loc="left")

    for row in timeline.itertuples(index=False):
        if row.label:
            band.axvspan(row.start, row.end, color=COLOURS.get(row.label, FALLBACK_COLOUR), linewidth=0)
            moved = {mark: getattr(row, column, np.nan) for column, mark in MARKS.items()}
            moved = {mark: value for mark, value in moved.items() if np.isfinite(value)}
            if len(moved) > 1:  # which modality moved the answer most: marked when there was more than one
                band.text(
                    (row.start + row.end) / 2,
                    0.5,
                    max(moved, key=moved.get),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
    band.set_yticks([])
    band.set_ylabel("top", rotation=0, ha="right", va="center")

    spoken = [row for row in timeline.itertuples(index=False) if row.text]
    for i, row in enumerate(spoken):
        y = 1 - (i % TEXT_ROWS + 0.5) / TEXT_ROWS
        said = f"{row.speaker}: {row.text}" if getattr(row, "speaker", "") else row.text  # who, with --speakers
        words.text(row.start, y, textwrap.shorten(said, TEXT_CHARS, placeholder="…"), fontsize=8, va="center")
    words.set_yticks([])
    words.set_ylim(0, 1)
    words.set_xlabel("time (s)")
    words.set_ylabel("words", rotation=0, ha="right", va="center")
    words.set_xlim(0, max(duration, 1e-3))

    if path is not None:
        path = Path(path)
        temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")  # renamed when complete: never half a file
        try:
            figure.savefig(temporary, dpi=120)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return figure
