"""Who speaks when, laid over a prediction: the speaker column, who is on camera, and a summary per speaker.

:class:`SpeakerEvidence` passes a recording's pieces (chunks) through to the predictor unchanged and keeps what
diarization needs of them; once the whole recording has been read, :meth:`SpeakerEvidence.who_speaks` clusters the
voice prints once (so the speaker labels are the same in every chunk) and tells who is on camera, and
:func:`with_speakers` adds both to the prediction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import pandas as pd

from alignment.active_speaker import segments_on_camera, speaker_on_camera
from alignment.diarization import Turn, diarize_prints, label_segments
from encoders.speakers import EMBEDDING
from encoders.vad import speech_at
from fusion.experts.bundle import ExpertBundle
from fusion.labels import MODALITIES
from fusion.media.features import RecordingFeatures
from fusion.serving.prediction import (
    ATTRIBUTION,
    Prediction,
    Summary,
    recording_summary,
    segment_outcome,
    weighted_summary,
    with_summary_weights,
)


class SpeakerEvidence:
    """The pieces of a recording passed through unchanged, their speech spans and voice prints kept (192 floats per
    0.4 s of speech: about 1.7 MB an hour) to be clustered once the whole recording has been read; and the main
    face's mouth motion at each sampled frame with whether speech is heard then (about 0.2 MB an hour), to tell
    which speaker is on camera."""

    def __init__(self, pieces: Iterable[RecordingFeatures]):
        self.pieces = pieces
        self.spans: list[tuple[float, float]] = []
        self.prints: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # face times, mouth motion, speaking

    def __iter__(self):
        for piece in self.pieces:
            self.spans += piece.speech_spans
            if piece.voice_prints is not None:
                self.prints.append(piece.voice_prints)
                self.times.append(piece.voice_print_times)
            if piece.mouth_motion is not None and piece.speech is not None:
                speaking = speech_at(piece.face_times, piece.speech, piece.start)
                self.frames.append((piece.face_times, piece.mouth_motion, speaking))
            yield piece

    def who_speaks(self, seconds: float, n_speakers: int | None) -> tuple[list[Turn], dict[str, bool | None]]:
        """-> (the turns of a recording of `seconds` seconds, whether each speaker is the one on camera)."""
        prints = np.concatenate(self.prints) if self.prints else np.zeros((0, EMBEDDING), np.float32)
        times = np.concatenate(self.times) if self.times else np.zeros((0, 2))
        turns = diarize_prints(self.spans, prints, times[:, 0], times[:, 1], seconds, speakers=n_speakers)
        return turns, speaker_on_camera(turns, *self.face_motion())

    def face_motion(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) face frame times, (n,) mouth motion (NaN without a face), (n,) bool speech heard; empty without
        video."""
        if not self.frames:
            return np.zeros(0), np.zeros(0, np.float32), np.zeros(0, bool)
        return tuple(np.concatenate(column) for column in zip(*self.frames))


def with_speakers(
    prediction: Prediction, turns: list[Turn], on_camera: dict[str, bool | None] | None = None
) -> Prediction:
    """The prediction with a speaker column (who says most of each utterance, who covers most of another segment;
    "" where no one speaks), an
    on_camera_speaking column (whether the face shown is that speaker: True, False or None for unknown, see
    alignment.active_speaker.segments_on_camera) and, in its summary, the weighted mean probabilities and label
    of each speaker's segments with whether they are on camera. on_camera: per speaker (speaker_on_camera); None:
    unknown for all."""
    on_camera = on_camera or {}
    timeline = prediction.timeline.copy()
    spoken = [bool(text) for text in timeline["text"]]
    speakers = label_segments(turns, list(zip(timeline["start"], timeline["end"])), spoken)
    timeline.insert(3, "speaker", [label or "" for label in speakers])
    column = segments_on_camera(speakers, timeline["face_present"].tolist(), on_camera)
    timeline.insert(5, "on_camera_speaking", pd.Series(column, index=timeline.index, dtype=object))
    named = sorted({t.speaker for t in turns}, key=lambda name: int(name[1:]))
    by_speaker = speaker_summaries(timeline, prediction.labels, {s: on_camera.get(s) for s in named})
    summary = dataclasses.replace(prediction.summary, speakers=by_speaker)
    return dataclasses.replace(prediction, timeline=timeline, summary=summary, turns=turns)


def speaker_summaries(
    timeline: pd.DataFrame, labels: tuple[str, ...], on_camera: dict[str, bool | None]
) -> dict[str, Summary]:
    """{speaker: its Summary} for each speaker of on_camera (whose value is kept): weighted_summary of that
    speaker's segments of timeline, with their seconds."""
    return {
        speaker: dataclasses.replace(
            weighted_summary(timeline[timeline["speaker"] == speaker], labels), on_camera=shown
        )
        for speaker, shown in on_camera.items()
    }


def face_of_speakers_only(prediction: Prediction, bundle: ExpertBundle) -> Prediction:
    """The prediction fused again by the bundle, from its experts' outputs per segment, without the face where the
    face shown is not the segment's speaker (on_camera_speaking False): a listener's face says nothing of the
    speaker's emotion."""
    timeline = prediction.timeline
    listener = np.array([value is False for value in timeline["on_camera_speaking"]])  # None: unknown
    had_face = ~np.isnan(prediction.experts["video"]).any(1)
    rows = np.flatnonzero(listener & had_face)
    if not len(rows):
        return prediction
    outputs = {m: o[rows].copy() for m, o in prediction.experts.items()}
    outputs["video"][:] = np.nan
    fused = bundle.fuse(outputs)
    attribution = bundle.attribution(outputs, fused)
    present = np.stack([~np.isnan(outputs[m]).any(1) for m in MODALITIES], 1)
    timeline = timeline.copy()
    for i, (row, p, has) in enumerate(zip(rows, fused, present)):
        outcome = segment_outcome(prediction.labels, p if has.any() else np.full_like(p, np.nan), has)
        outcome |= {ATTRIBUTION[m]: attribution[m][i] for m in MODALITIES}
        timeline.loc[row, list(outcome)] = list(outcome.values())
    experts = {m: o.copy() for m, o in prediction.experts.items()}
    experts["video"][rows] = np.nan
    timeline = with_summary_weights(timeline, bundle.summary_weights(experts))
    on_camera = {name: theirs.on_camera for name, theirs in prediction.summary.speakers.items()}
    summary = recording_summary(timeline, prediction.labels)
    summary = dataclasses.replace(summary, speakers=speaker_summaries(timeline, prediction.labels, on_camera))
    return dataclasses.replace(prediction, timeline=timeline, summary=summary)
