"""The result of predicting one recording, and its one serialisation.

:meth:`Prediction.segment_rows` turns the timeline into plain records; ``fusion predict --format json``
(:meth:`Prediction.to_dict`) and the segments table of ``fusion score`` (:mod:`fusion.serving.batch`) are both
written from them, so the two say the same of every segment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from alignment.diarization import Turn
from fusion.errors import NoSpeakerError
from fusion.labels import MODALITIES

ON_CAMERA = "on-camera"  # for_speaker's name for the speaker whose face is shown
ATTRIBUTION = {m: f"attribution_{m}" for m in MODALITIES}  # the timeline's column of each modality's attribution
SUMMARY_WEIGHT = "summary_weight"  # the timeline's column: how much a segment counts in the summary, beside its seconds


def _found(speakers: dict) -> str:
    return ", ".join(speakers) or "none: no speech"


@dataclass(frozen=True)
class Summary:
    """A recording's emotion, or one speaker's: the mean probabilities over its predicted segments, each weighted
    by its seconds times its summary_weight (see :class:`Prediction`).

    label: the top emotion; None (and every probability NaN, null in JSON) when no segment has anything to go by:
    nothing is known, which is not "0% of every emotion". modalities: those whose experts had something to say in
    some segment (None in a speaker's entry). seconds: the seconds of the segments that count (a speaker's, and
    for_speaker's). on_camera: whether the face shown is this speaker's (True, False, None: unknown). speaker: whose
    summary for_speaker made this. speakers: one Summary per speaker, when the prediction has speakers.
    """

    probabilities: dict[str, float]
    label: str | None
    modalities: tuple[str, ...] | None = None
    seconds: float | None = None
    on_camera: bool | None = None
    speaker: str | None = None
    speakers: dict[str, Summary] | None = None

    def to_dict(self) -> dict:
        """Plain JSON values: probabilities and label, and of the rest those this summary has (a speaker's
        seconds always with its on_camera, which may be None)."""
        known = {e: None if math.isnan(p) else p for e, p in self.probabilities.items()}
        out = {"probabilities": known, "label": self.label}
        if self.modalities is not None:
            out["modalities"] = list(self.modalities)
        if self.speaker is not None:
            out["speaker"] = self.speaker
        if self.seconds is not None:
            out |= {"seconds": self.seconds, "on_camera": self.on_camera}
        if self.speakers is not None:
            out["speakers"] = {name: theirs.to_dict() for name, theirs in self.speakers.items()}
        return out


def weighted_summary(timeline: pd.DataFrame, labels: tuple[str, ...]) -> Summary:
    """The mean probabilities of the segments that have any (NaN rows skipped), each weighted by its seconds times
    its summary_weight (when the timeline has that column), its top label (None, and NaN probabilities, when no
    segment counts), and the seconds of the segments that count."""
    probabilities = timeline[list(labels)].to_numpy(dtype=np.float64)
    predicted = ~np.isnan(probabilities).any(1)
    seconds = (timeline["end"] - timeline["start"]).to_numpy()
    weights = seconds * predicted
    if SUMMARY_WEIGHT in timeline:
        weights = weights * timeline[SUMMARY_WEIGHT].fillna(0.0).to_numpy()
    if not (weights > 0).any():
        return Summary(dict.fromkeys(labels, math.nan), None, seconds=0.0)
    mean = (np.nan_to_num(probabilities) * weights[:, None]).sum(0) / weights.sum()
    counted = float(seconds[weights > 0].sum())
    return Summary(dict(zip(labels, mean.tolist())), labels[int(np.argmax(mean))], seconds=counted)


def with_summary_weights(timeline: pd.DataFrame, weights: np.ndarray) -> pd.DataFrame:
    """The timeline with its summary_weight column (after modalities) set to weights: (n_segments,) from
    ExpertBundle.summary_weights."""
    timeline = timeline.drop(columns=SUMMARY_WEIGHT, errors="ignore")
    timeline.insert(timeline.columns.get_loc("modalities") + 1, SUMMARY_WEIGHT, np.asarray(weights, np.float64))
    return timeline


def recording_summary(timeline: pd.DataFrame, labels: tuple[str, ...]) -> Summary:
    """A recording's Summary: weighted_summary of all its segments, with the modalities that some segment had
    (the timeline's modalities column: the experts that had something to say)."""
    whole = weighted_summary(timeline, labels)
    seen = {m for cell in timeline["modalities"] for m in cell.split(",") if m}
    return Summary(whole.probabilities, whole.label, tuple(m for m in MODALITIES if m in seen))


def segment_outcome(labels: tuple[str, ...], probabilities: np.ndarray, present: np.ndarray) -> dict:
    """A segment's timeline values from its fused probabilities (NaN where it has no modality) and which of
    MODALITIES it has: a probability per label, its top label ("" without a modality) and its modalities
    (comma-separated)."""
    return {
        **dict(zip(labels, probabilities.tolist())),
        "label": labels[int(np.argmax(probabilities))] if present.any() else "",
        "modalities": ",".join(m for m, h in zip(MODALITIES, present) if h),
    }


@dataclass
class Prediction:
    """The emotion timeline of one recording.

    timeline: one row per segment with columns start, end (seconds), text, face_present (share of sampled
        frames with a face; NaN without video), one probability column per emotion, label (top emotion),
        modalities (comma-separated, the experts that had something there), summary_weight (how much the segment
        counts in the summary, a factor on its seconds: 1 where the voice speaks; for a segment that only a face or
        words speak for, in a recording where the voice speaks elsewhere, as much as they would count beside the
        voice, 0 where they show no more emotion than usual: see fusion.experts.late_fusion) and attribution_audio /
        _text / _video: how much each modality moved the segment's answer (the label's log-probability less its
        log-probability with that modality left out; NaN where it is absent). A segment with no modality at all has NaN
        probabilities and an empty label.
    summary: the recording's :class:`Summary`, the mean over the predicted segments weighted by seconds times
        summary_weight.
    damaged: (start, end) seconds of the recording that could not be decoded (damaged packets, skipped; audio
        there is silence, and no frame was sampled from them); empty for an intact file.
    turns: who speaks when (alignment.diarization.Turn), when the Predictor was asked for speakers; then the
        timeline has a speaker column after text ("S1", "S2", ... in order of first speech; "" where no one
        speaks) and an on_camera_speaking column after face_present (True: the face shown is the segment's
        speaker; False: it is someone else, whose face is then left out of the segment; None: unknown, without a
        face or a speaker), and the summary has speakers: {speaker: Summary}, each the weighted mean over
        that speaker's segments, as the whole summary is over all of them.
    """

    file: str
    duration: float
    labels: tuple[str, ...]
    timeline: pd.DataFrame
    summary: Summary
    timings: dict[str, float] = field(default_factory=dict)
    damaged: list[tuple[float, float]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    # what each expert said of each segment before fusion: {modality: (n_segments, n_labels)}, NaN where absent
    experts: dict[str, np.ndarray] = field(default_factory=dict)

    def segment_rows(self) -> list[dict]:
        """One plain record per segment, the timeline's columns in order (start, end, text, face_present, one
        probability per label, label, modalities, summary_weight, attributions): NaN becomes None, so that every
        record is valid JSON, and modalities stays the comma-separated string ("" where no modality has anything)."""
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
                **({"speaker": row["speaker"] or None} if "speaker" in row else {}),
                "modalities": row["modalities"].split(",") if row["modalities"] else [],
                "face_present": row["face_present"],
                **({"on_camera_speaking": row["on_camera_speaking"]} if "on_camera_speaking" in row else {}),
                "probabilities": {e: row[e] for e in self.labels},
                "label": row["label"] or None,
                **({SUMMARY_WEIGHT: row[SUMMARY_WEIGHT]} if SUMMARY_WEIGHT in row else {}),
                "attribution": {m: row[column] for m, column in ATTRIBUTION.items() if column in row},
            }
            for row in self.segment_rows()
        ]
        return {
            "file": self.file,
            "duration": self.duration,
            "segments": segments,
            "summary": self.summary.to_dict(),
            "damaged": [list(span) for span in self.damaged],
            **({"turns": [dataclasses.asdict(t) for t in self.turns]} if self.turns else {}),
            "timings": self.timings,
        }

    def for_speaker(self, speaker: str) -> Prediction:
        """The segments of one speaker ("S1", ..., or "on-camera": the one whose face is shown), with that speaker's
        summary (and the recording's modalities); "all" returns the prediction as it is. Raises NoSpeakerError when
        the prediction has no such speaker (or was made without speakers)."""
        speakers = self.summary.speakers
        if speakers is None:
            raise NoSpeakerError(self.file, "speakers were not found (Predictor(speakers=True), --speakers)")
        if speaker == "all":
            return self
        if speaker == ON_CAMERA:
            shown = [name for name, theirs in speakers.items() if theirs.on_camera]
            if not shown:
                if self.timeline["face_present"].isna().all():
                    why = "it has no video track"
                elif not speakers:
                    why = "no one speaks in it"
                else:
                    why = "the face shown moves no more while anyone speaks than in silence, or too few frames show it"
                raise NoSpeakerError(self.file, f"no speaker is on camera: {why} (found: {_found(speakers)})")
            speaker = shown[0]
        if speaker not in speakers:
            raise NoSpeakerError(self.file, f"no speaker {speaker!r} (found: {_found(speakers)})")
        mine = (self.timeline["speaker"] == speaker).to_numpy()
        timeline = self.timeline[mine].reset_index(drop=True)
        summary = dataclasses.replace(speakers[speaker], modalities=self.summary.modalities, speaker=speaker)
        experts = {m: p[mine] for m, p in self.experts.items()}
        return dataclasses.replace(self, timeline=timeline, summary=summary, experts=experts)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self, path: str | os.PathLike | None = None) -> str | None:
        """The timeline as CSV: written to path, or returned as a string when path is None."""
        return self.timeline.to_csv(path, index=False, float_format="%.6g")

    def plot(self, *, path: str | os.PathLike | None = None, title: str | None = None):
        """A matplotlib Figure of the timeline (see :func:`fusion.serving.plot.plot_timeline`); saved to path when
        given. title: default the file's name, its label and modalities."""
        from fusion.serving.plot import plot_timeline  # matplotlib loads only when a plot is asked for

        modalities = ", ".join(self.summary.modalities or ())
        title = title or f"{os.path.basename(self.file)}: {self.summary.label} overall ({modalities})"
        return plot_timeline(self.timeline, self.labels, self.duration, title=title, path=path)
