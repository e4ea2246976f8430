"""Prediction: a recording in, an emotion timeline out.

    >>> import fusion
    >>> result = fusion.predict("interview.mp4")
    >>> result.timeline          # one row per segment: start, end, text, probabilities, label, modalities
    >>> result.summary           # clip-level probabilities and label

`fusion.load(checkpoint)` returns a :class:`Predictor` that loads every model once and predicts many files. The one
path of a prediction: the recording is decoded and read in chunks (fusion.media), each chunk's frozen features are
cut into segments on the timeline (alignment), each expert scores each segment from what lies inside it and the
bundle fuses them (fusion.experts.bundle); with speakers, fusion.serving.speakers then says who speaks when.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from alignment import DEFAULT_WINDOW_S, Segment, make_segments
from encoders.loading import EncoderSources
from encoders.memory import bound_allocator, release_free_memory
from encoders.runtime import pick_device
from fusion.errors import CheckpointError, FusionError, NoModalityError
from fusion.experts.bundle import ExpertBundle, bundle_digest, is_bundle, read_bundle_config, voice_whisper_block
from fusion.experts.voice import SpeakerStatistics
from fusion.labels import MODALITIES
from fusion.media.decoding import DEFAULT_FPS
from fusion.media.features import FeatureExtractor, RecordingFeatures
from fusion.media.streaming import CHUNK_S
from fusion.serving.prediction import (
    ATTRIBUTION,
    Prediction,
    recording_summary,
    segment_outcome,
    with_summary_weights,
)
from fusion.serving.speakers import SpeakerEvidence, face_of_speakers_only, with_speakers

CHECKPOINT_ENV = "FUSION_CHECKPOINT"
DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "default"  # fusion/checkpoints/: package data


class Predictor:
    """Loads an experts bundle and the frozen encoders once; :meth:`predict` then scores any number of files.

    sources: the frozen models (:class:`encoders.loading.EncoderSources`), resolved here once: those it leaves
    unchosen come from the environment variables FUSION_WHISPER_MODEL / FUSION_TEXT_MODEL / FUSION_FACE_MODEL, else
    the defaults (the bundle's text expert names its own base model).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        sources: EncoderSources | None = None,
        device: str | torch.device | None = None,
        chunk_s: float = CHUNK_S,
        speakers: bool = False,
        experts: Sequence[str] | None = None,
        background: bool | None = None,
        prefetch: str | os.PathLike | None = None,
    ):
        """speakers: also find who speaks when (alignment.diarization), giving the timeline a speaker column and
        the summary one entry per speaker; loads the speaker encoder. experts: only these of the bundle's experts
        (voice, text, face) take part, as if it had no others (default: all it has). background: decode in the
        decoding process (True), in this one (False), or by the recording's length (None: see
        fusion.media.features.FeatureExtractor.stream). prefetch: the recording the first predict() will read,
        decoded while the models load (see :meth:`prefetch`)."""
        bound_allocator()  # before the models load: large blocks go back to the system when freed
        chosen = sources or EncoderSources()
        self.speakers = speakers
        self.device = pick_device(device)
        self.chunk_s = chunk_s  # seconds of a long recording decoded and encoded at a time
        self.background = background
        path = resolve_checkpoint(checkpoint)
        # the extractor first: it starts the decoding process on prefetch, which then decodes while the models load
        self.extractor = FeatureExtractor(
            sources=chosen.resolve(),
            fps=DEFAULT_FPS,
            device=self.device,
            whisper_blocks=voice_whisper_block(path, experts),
            voice_prints=speakers,
            prefetch=prefetch if background is not False else None,
            chunk_s=chunk_s,
        )
        # the text expert resolves its own base model: the one chosen, $FUSION_TEXT_MODEL, the one it names
        self.bundle = ExpertBundle.load(path, text_model=chosen.text, device=self.device, experts=experts)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    @property
    def experts(self) -> tuple[str, ...]:
        """The experts that take part (voice, text, face)."""
        return self.bundle.experts

    @property
    def model_id(self) -> str:
        """sha256 prefix of the loaded bundle's weights and configs."""
        return self.bundle.id

    def prefetch(self, path: str | os.PathLike) -> None:
        """Start decoding a recording that a later predict() will read (a long one, in the decoding process), so that
        its first chunks are ready then: e.g. the next file of a batch while this one's last chunk is scored."""
        if self.background is not False:
            self.extractor.prefetch(path, chunk_s=self.chunk_s)

    def predict(
        self,
        path: str | os.PathLike,
        *,
        segments: str = "utterance",
        window_s: float = DEFAULT_WINDOW_S,
        n_speakers: int | None = None,
    ) -> Prediction:
        """Decode, encode, align and fuse one recording, streaming it chunk by chunk in bounded memory.

        segments: "utterance" (Whisper's utterances, pauses and silence in windows of about window_s seconds)
        or "window" (fixed windows of about window_s seconds).
        n_speakers: how many people speak, when known (a Predictor made with speakers=True); else estimated.
        Raises MediaError for an unreadable file and NoModalityError when it has neither audio nor a face.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        pieces = self.extractor.stream(path, chunk_s=self.chunk_s, background=self.background, timings=timings)
        if self.speakers:
            pieces = SpeakerEvidence(pieces)
        result = self._predict_pieces(pieces, segments=segments, window_s=window_s, timings=timings)
        if self.speakers:
            started = time.perf_counter()
            result = with_speakers(result, *pieces.who_speaks(result.duration, n_speakers))
            result = face_of_speakers_only(result, self.bundle)
            _add(timings, "diarization", started)
        timings["total"] = time.perf_counter() - start
        return result

    def predict_together(
        self, paths: Sequence[str | os.PathLike], *, segments: str = "utterance", window_s: float = DEFAULT_WINDOW_S
    ) -> list[Prediction | FusionError]:
        """Recordings of one speaker (e.g. short clips of one person), each predicted as :meth:`predict` does, except
        that a voice expert with speaker normalisation reads every one of them standardised with the statistics of
        all of them, as it does the segments of one long recording. One Prediction per path, or the FusionError that
        path raised (unreadable, no modality), so that one bad file costs the others nothing.

        Every recording's features are held until all are read: meant for short recordings (a long one gathers its
        speaker's statistics by itself). No diarization: the recordings are one speaker's.
        """
        read: list[list[RecordingFeatures] | FusionError] = []
        for path in paths:
            timings: dict[str, float] = {}
            try:
                pieces = list(
                    self.extractor.stream(path, chunk_s=self.chunk_s, background=self.background, timings=timings)
                )
            except FusionError as error:
                read.append(error)
                continue
            read.append(pieces)
        statistics = None
        for pieces in read:
            for piece in pieces if isinstance(pieces, list) else ():
                timeline = make_segments(
                    piece.utterances, piece.duration, start=piece.start, mode=segments, window_s=window_s
                )
                more = self.bundle.voice_statistics(piece, timeline)
                if more is not None:
                    statistics = more if statistics is None else statistics + more
        out: list[Prediction | FusionError] = []
        for pieces in read:
            if not isinstance(pieces, list):
                out.append(pieces)
                continue
            timings = dict(pieces[0].timings) if pieces else {}
            try:
                out.append(
                    self._predict_pieces(
                        pieces, segments=segments, window_s=window_s, timings=timings, voice_statistics=statistics
                    )
                )
            except FusionError as error:
                out.append(error)
        return out

    def predict_features(
        self, features: RecordingFeatures, *, segments: str = "utterance", window_s: float = DEFAULT_WINDOW_S
    ) -> Prediction:
        """The timeline of a recording whose features are already extracted."""
        timings = dict(features.timings)
        return self._predict_pieces([features], segments=segments, window_s=window_s, timings=timings)

    def _predict_pieces(
        self,
        pieces: Iterable[RecordingFeatures],
        *,
        segments: str,
        window_s: float,
        timings: dict[str, float],
        voice_statistics: SpeakerStatistics | None = None,
    ) -> Prediction:
        """A recording given as consecutive pieces (chunks): each segment is scored by the experts from what lies
        inside it, so each piece is done once its features are extracted. voice_statistics: the speaker's, gathered
        beforehand (None: the recording's own, added up piece by piece)."""
        path, end, modalities, damaged, parts, outputs = None, 0.0, set(), [], [], []
        # the recording's speaker statistics, added up piece by piece, for a voice expert that normalises
        statistics = [] if voice_statistics is None else voice_statistics
        for piece in pieces:
            release_free_memory()
            path, end = piece.path, piece.start + piece.duration
            modalities.update(piece.modalities)
            damaged += piece.damaged
            timeline = make_segments(
                piece.utterances, piece.duration, start=piece.start, mode=segments, window_s=window_s
            )
            start = time.perf_counter()
            experts = self.bundle.segment_probabilities(piece, timeline, statistics)
            fused = self.bundle.fuse(experts)
            attribution = self.bundle.attribution(experts, fused)
            _add(timings, "experts", start)
            outputs.append(experts)
            parts.append(self._rows(timeline, fused, experts, attribution, piece))
        if not modalities:
            raise NoModalityError(path, "no audio track and no face in any sampled frame")
        timeline = pd.concat(parts, ignore_index=True)
        experts = {m: np.concatenate([o[m] for o in outputs]) for m in MODALITIES}
        timeline = with_summary_weights(timeline, self.bundle.summary_weights(experts))
        summary = recording_summary(timeline, self.labels)
        return Prediction(path, end, self.labels, timeline, summary, timings, damaged, experts=experts)

    def _rows(self, timeline: list[Segment], fused, experts, attribution, piece: RecordingFeatures) -> pd.DataFrame:
        present = np.stack([~np.isnan(experts[m]).any(1) for m in MODALITIES], 1)
        fused = np.where(present.any(1, keepdims=True), fused, np.nan)
        rows = []
        for i, (segment, p, has) in enumerate(zip(timeline, fused, present)):
            rows.append(
                {
                    "start": round(segment.start, 3),
                    "end": round(segment.end, 3),
                    "text": segment.text,
                    "face_present": _face_share(piece, segment),
                    **segment_outcome(self.labels, p, has),
                    **{ATTRIBUTION[m]: attribution[m][i] for m in MODALITIES},
                }
            )
        columns = ["start", "end", "text", "face_present", *self.labels, "label", "modalities", *ATTRIBUTION.values()]
        numeric = {c: float for c in ("start", "end", "face_present", *self.labels, *ATTRIBUTION.values())}
        return pd.DataFrame(rows, columns=columns).astype(numeric)  # typed even with no rows, for pd.concat


def _add(timings: dict[str, float], stage: str, since: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - since


def _face_share(piece: RecordingFeatures, segment: Segment) -> float:
    """Share of the sampled frames inside the segment that show a face; NaN without sampled frames there. (Times
    compared, and the share taken, in float32.)"""
    if piece.face_times is None:
        return float("nan")
    times = piece.face_times.astype(np.float32)
    inside = (times >= segment.start) & (times < segment.end)
    return float(piece.face_present[inside].astype(np.float32).mean()) if inside.any() else float("nan")


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """The checkpoint to load: the argument, else $FUSION_CHECKPOINT, else the model shipped with the package."""
    if checkpoint is not None:
        return Path(checkpoint)
    if os.environ.get(CHECKPOINT_ENV):
        return Path(os.environ[CHECKPOINT_ENV])
    if is_bundle(DEFAULT_CHECKPOINT):
        return DEFAULT_CHECKPOINT
    raise CheckpointError(
        "No checkpoint given and no default model is installed with this package. Pass checkpoint=PATH "
        f"(command line: --checkpoint PATH) or set {CHECKPOINT_ENV}=PATH to a folder written by `fusion bundle`."
    )


def model_id(checkpoint: str | os.PathLike) -> str:
    """The id a Predictor of this checkpoint reports (Predictor.model_id), read without loading any model."""
    path = Path(checkpoint)
    read_bundle_config(path)  # a folder that is no bundle, or a malformed experts.json, stops here (CheckpointError)
    return bundle_digest(path)


def load(
    checkpoint: str | os.PathLike | None = None,
    *,
    whisper_model: str | os.PathLike | None = None,
    text_model: str | os.PathLike | None = None,
    face_model: str | os.PathLike | None = None,
    asr: str | None = None,
    asr_model: str | os.PathLike | None = None,
    **options,
) -> Predictor:
    """A :class:`Predictor` with every model loaded once. whisper_model, text_model, face_model: a name or local
    path for each frozen model (its :class:`EncoderSources`); asr: the speech recognition backend
    (encoders.asr.ASR_BACKENDS, default ctranslate2); asr_model: that backend's model (tiny.en, base or a
    CTranslate2 folder; default the conversion of the Whisper model); options (device, chunk_s) as for
    :class:`Predictor`."""
    sources = EncoderSources(whisper=whisper_model, text=text_model, face=face_model, asr=asr, asr_model=asr_model)
    return Predictor(checkpoint, sources=sources, **options)


@functools.lru_cache(maxsize=2)
def _cached_predictor(checkpoint: str | None, options: tuple) -> Predictor:
    return load(checkpoint, **dict(options))


def predict(
    video_path: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    segments: str = "utterance",
    window_s: float = DEFAULT_WINDOW_S,
    **options,
) -> Prediction:
    """Predict the emotion timeline of one recording.

    The models are loaded on the first call and reused by later calls with the same checkpoint and options.
    options: whisper_model, text_model, face_model, asr, asr_model, device (see :func:`load`).
    """
    key = None if checkpoint is None else os.fspath(checkpoint)
    options = tuple(sorted((k, None if v is None else str(v)) for k, v in options.items()))
    return _cached_predictor(key, options).predict(video_path, segments=segments, window_s=window_s)
