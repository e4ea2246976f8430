"""Prediction: a recording in, an emotion timeline out.

    >>> import fusion
    >>> result = fusion.predict("interview.mp4", checkpoint="runs/model")
    >>> result.timeline          # one row per segment: start, end, text, probabilities, label, modalities
    >>> result.summary           # clip-level probabilities and label

`fusion.load(checkpoint)` returns a :class:`Predictor` that loads every model once and predicts many files.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from alignment import DEFAULT_WINDOW_S, Segment, Stream, make_segments
from alignment.active_speaker import segments_on_camera, speaker_on_camera
from alignment.diarization import Turn, diarize_prints, label_segments
from encoders.loading import EncoderSources
from encoders.runtime import autocast, pick_device
from encoders.speakers import EMBEDDING
from encoders.vad import speech_at
from fusion import checkpoint as checkpoints
from fusion.errors import CheckpointError, NoModalityError
from fusion.experts.bundle import ExpertBundle, bundle_digest, is_bundle, read_bundle_config
from fusion.media.decoding import DEFAULT_FPS
from fusion.media.features import FeatureExtractor, RecordingFeatures
from fusion.media.streaming import CHUNK_S
from fusion.model import MODALITIES, FusionBatch, FusionModel, modalities_present
from fusion.serving.memory import release_free_memory
from fusion.serving.prediction import Prediction

CHECKPOINT_ENV = "FUSION_CHECKPOINT"
DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "default"  # fusion/checkpoints/: package data
SEGMENT_BATCH = 32  # segments fused per forward pass


class Predictor:
    """Loads a checkpoint and the frozen encoders once; :meth:`predict` then scores any number of files.

    sources: the frozen models (:class:`encoders.loading.EncoderSources`), resolved here once: those it leaves
    unchosen come from the environment variables FUSION_WHISPER_MODEL / FUSION_TEXT_MODEL / FUSION_FACE_MODEL, else
    from the checkpoint (Whisper and the text model it names; an experts bundle's text expert names its own), else
    the defaults.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        sources: EncoderSources | None = None,
        device: str | torch.device | None = None,
        chunk_s: float = CHUNK_S,
        speakers: bool = False,
    ):
        """speakers: also find who speaks when (alignment.diarization), giving the timeline a speaker column and
        the summary one entry per speaker; loads the speaker encoder."""
        chosen = sources or EncoderSources()
        self.speakers = speakers
        self.device = pick_device(device)
        self.chunk_s = chunk_s  # seconds of a long recording decoded and encoded at a time
        path = resolve_checkpoint(checkpoint)
        if is_bundle(path):  # the experts fused late (the shipped default model)
            # the text expert resolves its own base model: the one chosen, $FUSION_TEXT_MODEL, the one it names
            self.bundle: ExpertBundle | None = ExpertBundle.load(path, text_model=chosen.text, device=self.device)
            self.checkpoint, self.model = None, None
            self.extractor = FeatureExtractor(
                sources=chosen.resolve(),
                fps=DEFAULT_FPS,
                device=self.device,
                whisper_blocks=self.bundle.whisper_block,
                embed_words=False,  # the bundle's text expert reads the words itself
                voice_prints=speakers,
            )
            return
        self.bundle = None
        self.checkpoint = checkpoints.load(path, device=self.device)
        self.model: FusionModel = self.checkpoint.model
        named = EncoderSources(whisper=self.checkpoint.encoders.whisper, text=self.checkpoint.encoders.text)
        self.extractor = FeatureExtractor(
            sources=chosen.resolve(named),
            fps=self.checkpoint.fps,
            device=self.device,
            voice_prints=speakers,
        )
        if self.extractor.word_encoder.dim != self.model.config.text_dim:
            raise CheckpointError(
                f"{self.checkpoint.path}: trained on {self.model.config.text_dim}-d text embeddings, but the text "
                f"model {self.extractor.word_encoder.name} gives {self.extractor.word_encoder.dim}-d ones"
            )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels if self.bundle is not None else self.model.config.labels

    @property
    def model_id(self) -> str:
        """sha256 prefix of the loaded model's weights (and, for a bundle, its configs)."""
        return self.bundle.id if self.bundle is not None else self.checkpoint.id

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
        pieces = self.extractor.stream(path, chunk_s=self.chunk_s, timings=timings)
        if not self.speakers:
            result = self._predict_pieces(pieces, segments=segments, window_s=window_s, timings=timings)
            timings["total"] = time.perf_counter() - start
            return result
        pieces = _Speakers(pieces)
        experts: list[dict[str, np.ndarray]] = []  # an experts bundle's outputs per piece, to fuse again
        result = self._predict_pieces(pieces, segments=segments, window_s=window_s, timings=timings, experts=experts)
        started = time.perf_counter()
        turns = pieces.turns(result.duration, n_speakers)
        result = with_speakers(result, turns, speaker_on_camera(turns, *pieces.face_motion()))
        if self.bundle is not None:
            result = self._face_of_speakers_only(result, experts)
        _add(timings, "diarization", started)
        timings["total"] = time.perf_counter() - start
        return result

    def predict_features(
        self, features: RecordingFeatures, *, segments: str = "utterance", window_s: float = DEFAULT_WINDOW_S
    ) -> Prediction:
        """The timeline of a recording whose features are already extracted."""
        return self._predict_pieces([features], segments=segments, window_s=window_s, timings=dict(features.timings))

    def _predict_pieces(
        self,
        pieces: Iterable[RecordingFeatures],
        *,
        segments: str,
        window_s: float,
        timings: dict[str, float],
        experts: list[dict[str, np.ndarray]] | None = None,
    ) -> Prediction:
        """Fuse a recording given as consecutive pieces (chunks), keeping only the tokens that segments still need.

        A segment is fused once every token its cross-attention can reach (context_s either side) has been
        encoded, so the result does not depend on where the chunks were cut. experts: a list that an experts
        bundle's per-modality outputs of each piece are appended to (ignored by a cross-attention checkpoint).
        """
        if self.bundle is not None:
            return self._predict_with_experts(
                pieces, segments=segments, window_s=window_s, timings=timings, experts=experts
            )
        context = self.model.config.context_s
        path, end, modalities, damaged = None, 0.0, set(), []
        buffered: dict[str, Stream] | None = None
        pending: list[Segment] = []
        parts: list[pd.DataFrame] = []
        for piece in pieces:
            release_free_memory()  # what Whisper and BERT freed, before the CNNs allocate
            path, end = piece.path, piece.start + piece.duration
            modalities.update(piece.modalities)
            damaged += piece.damaged
            with torch.inference_mode(), autocast(self.device):
                tokens = self._encode(piece, timings)
            buffered = tokens if buffered is None else {m: _concat(buffered[m], tokens[m]) for m in MODALITIES}
            pending += make_segments(
                piece.utterances, piece.duration, start=piece.start, mode=segments, window_s=window_s
            )
            ready = [s for s in pending if s.end + context <= end]
            pending = pending[len(ready) :]
            parts.append(self._fuse(buffered, ready, timings))
            keep_from = (pending[0].start if pending else end) - context
            buffered = {m: stream[stream.times >= keep_from] for m, stream in buffered.items()}
            release_free_memory()  # what the CNNs and fusion freed, before the next chunk's Whisper
        if buffered is not None:
            parts.append(self._fuse(buffered, pending, timings))
        if not modalities:
            raise NoModalityError(path, "no audio track and no face in any sampled frame")
        timeline = pd.concat(parts, ignore_index=True)
        summary = self._summary(timeline, modalities)
        return Prediction(path, end, self.labels, timeline, summary, timings, damaged)

    def _predict_with_experts(
        self,
        pieces: Iterable[RecordingFeatures],
        *,
        segments: str,
        window_s: float,
        timings: dict[str, float],
        experts: list[dict[str, np.ndarray]] | None = None,
    ) -> Prediction:
        """The bundle's path: each segment is scored by the experts from what lies inside it, so each piece
        (chunk) is done once its features are extracted."""
        path, end, modalities, damaged, parts = None, 0.0, set(), [], []
        for piece in pieces:
            release_free_memory()
            path, end = piece.path, piece.start + piece.duration
            modalities.update(piece.modalities)
            damaged += piece.damaged
            timeline = make_segments(
                piece.utterances, piece.duration, start=piece.start, mode=segments, window_s=window_s
            )
            start = time.perf_counter()
            outputs = self.bundle.segment_probabilities(piece, timeline)
            fused = self.bundle.fuse(outputs)
            present = np.stack([~np.isnan(outputs[m]).any(1) for m in MODALITIES], 1)
            _add(timings, "experts", start)
            if experts is not None:
                experts.append(outputs)
            parts.append(self._rows(timeline, fused, present, _face_frames(piece)))
        if not modalities:
            raise NoModalityError(path, "no audio track and no face in any sampled frame")
        timeline = pd.concat(parts, ignore_index=True)
        return Prediction(path, end, self.labels, timeline, self._summary(timeline, modalities), timings, damaged)

    def _encode(self, features: RecordingFeatures, timings: dict[str, float]) -> dict[str, Stream]:
        """Run the trainable encoders over a recording (or chunk) once: audio tokens and face embeddings."""
        inputs = features.streams()
        start = time.perf_counter()
        audio = self.model.encode_audio_stream(inputs["audio"])
        if features.speech is not None:  # tokens away from detected speech do not speak for the voice
            audio.mask &= torch.from_numpy(speech_at(audio.times.numpy(), features.speech, features.start))
        _add(timings, "audio_cnn", start)

        start = time.perf_counter()
        video = self.model.encode_face_stream(inputs["video"])
        _add(timings, "face_cnn", start)
        return {"audio": audio, "text": inputs["text"], "video": video}

    def _fuse(self, tokens: dict[str, Stream], timeline: list[Segment], timings: dict[str, float]) -> pd.DataFrame:
        """The timeline rows of segments whose context (context_s either side) is inside tokens."""
        start = time.perf_counter()
        context = self.model.config.context_s
        probabilities, present = [torch.zeros(0, len(self.labels))], [torch.zeros(0, len(MODALITIES), dtype=bool)]
        with torch.inference_mode(), autocast(self.device):
            for first in range(0, len(timeline), SEGMENT_BATCH):
                batch_segments = timeline[first : first + SEGMENT_BATCH]
                examples = [
                    {m: tokens[m].between(s.start - context, s.end + context) for m in MODALITIES}
                    for s in batch_segments
                ]
                batch = FusionBatch.collate(examples, [(s.start, s.end) for s in batch_segments]).to(self.device)
                logits = self.model.fuse(batch.streams, batch.segments)
                probabilities.append(torch.softmax(logits.float(), -1).cpu())
                present.append(modalities_present(batch.streams, batch.segments).cpu())
        rows = self._rows(timeline, torch.cat(probabilities).numpy(), torch.cat(present).numpy(), tokens["video"])
        _add(timings, "fusion", start)
        return rows

    def _rows(self, timeline: list[Segment], probabilities, present, faces: Stream) -> pd.DataFrame:
        probabilities = np.where(present.any(1, keepdims=True), probabilities, np.nan)
        rows = []
        for segment, p, has in zip(timeline, probabilities, present):
            rows.append(
                {
                    "start": round(segment.start, 3),
                    "end": round(segment.end, 3),
                    "text": segment.text,
                    "face_present": _face_share(faces, segment),
                    **self._outcome(p, has),
                }
            )
        columns = ["start", "end", "text", "face_present", *self.labels, "label", "modalities"]
        numeric = {c: float for c in ("start", "end", "face_present", *self.labels)}
        return pd.DataFrame(rows, columns=columns).astype(numeric)  # typed even with no rows, for pd.concat

    def _outcome(self, probabilities: np.ndarray, present: np.ndarray) -> dict:
        """A segment's probability per label, its top label and its modalities (comma-separated) from its fused
        probabilities (NaN where it has no modality) and which modalities it has."""
        return {
            **dict(zip(self.labels, probabilities.tolist())),
            "label": self.labels[int(np.argmax(probabilities))] if present.any() else "",
            "modalities": ",".join(m for m, h in zip(MODALITIES, present) if h),
        }

    def _face_of_speakers_only(self, prediction: Prediction, experts: list[dict[str, np.ndarray]]) -> Prediction:
        """An experts bundle's timeline fused again without the face where the face shown is not the segment's
        speaker (on_camera_speaking False): a listener's face says nothing of the speaker's emotion."""
        timeline = prediction.timeline
        listener = np.array([value is False for value in timeline["on_camera_speaking"]])  # None: unknown
        outputs = {m: np.concatenate([e[m] for e in experts]) for m in MODALITIES}
        had_face = ~np.isnan(outputs["video"]).any(1)
        rows = np.flatnonzero(listener & had_face)
        if not len(rows):
            return prediction
        outputs["video"][rows] = np.nan
        fused = self.bundle.fuse({m: o[rows] for m, o in outputs.items()})
        present = np.stack([~np.isnan(outputs[m][rows]).any(1) for m in MODALITIES], 1)
        timeline = timeline.copy()
        for row, p, has in zip(rows, fused, present):
            outcome = self._outcome(p if has.any() else np.full_like(p, np.nan), has)
            timeline.loc[row, list(outcome)] = list(outcome.values())
        summary = {**prediction.summary, **self._summary(timeline, set(prediction.summary["modalities"]))}
        summary["speakers"] = speaker_summaries(timeline, self.labels, prediction.summary["speakers"])
        return dataclasses.replace(prediction, timeline=timeline, summary=summary)

    def _summary(self, timeline: pd.DataFrame, modalities: set[str]) -> dict:
        """Duration-weighted mean of the predicted segments' probabilities."""
        whole = _weighted_summary(timeline, self.labels)
        return {
            "probabilities": whole["probabilities"],
            "label": whole["label"],
            "modalities": [m for m in MODALITIES if m in modalities],
        }


def _weighted_summary(timeline: pd.DataFrame, labels: tuple[str, ...]) -> dict:
    """{"probabilities", "label", "seconds"}: the duration-weighted mean probabilities of the segments that have
    any (NaN rows skipped), its top label ("" when none has), and the seconds of those segments."""
    probabilities = timeline[list(labels)].to_numpy(dtype=np.float64)
    predicted = ~np.isnan(probabilities).any(1)
    weights = (timeline["end"] - timeline["start"]).to_numpy() * predicted
    mean = (np.nan_to_num(probabilities) * weights[:, None]).sum(0) / max(weights.sum(), 1e-9)
    return {
        "probabilities": dict(zip(labels, mean.tolist())),
        "label": labels[int(np.argmax(mean))] if predicted.any() else "",
        "seconds": float(weights.sum()),
    }


def _concat(first: Stream, second: Stream) -> Stream:
    return Stream(
        torch.cat([first.values, second.values]),
        torch.cat([first.times, second.times]),
        torch.cat([first.mask, second.mask]),
    )


def _add(timings: dict[str, float], stage: str, since: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - since


def _face_frames(piece: RecordingFeatures) -> Stream:
    """The sampled frames' times and whether each shows a face (no pixels), for _face_share."""
    if piece.face_times is None:
        return Stream.empty(1)
    times = torch.from_numpy(piece.face_times).float()
    return Stream(torch.zeros(len(times), 1), times, torch.from_numpy(piece.face_present))


def _face_share(faces: Stream, segment: Segment) -> float:
    """Share of the sampled frames inside the segment that show a face; NaN without sampled frames there."""
    inside = (faces.times >= segment.start) & (faces.times < segment.end)
    return float(faces.mask[inside].float().mean()) if inside.any() else float("nan")


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """The checkpoint to load: the argument, else $FUSION_CHECKPOINT, else the model shipped with the package."""
    if checkpoint is not None:
        return Path(checkpoint)
    if os.environ.get(CHECKPOINT_ENV):
        return Path(os.environ[CHECKPOINT_ENV])
    if (DEFAULT_CHECKPOINT / checkpoints.CONFIG_FILE).is_file() or is_bundle(DEFAULT_CHECKPOINT):
        return DEFAULT_CHECKPOINT
    raise CheckpointError(
        "No checkpoint given and no default model is installed with this package. Pass checkpoint=PATH "
        f"(command line: --checkpoint PATH) or set {CHECKPOINT_ENV}=PATH to a folder written by fusion training."
    )


def model_id(checkpoint: str | os.PathLike) -> str:
    """The id a Predictor of this checkpoint reports (Predictor.model_id), read without loading any model."""
    path = Path(checkpoint)
    if is_bundle(path):
        read_bundle_config(path)  # a malformed experts.json stops here, with its CheckpointError
        return bundle_digest(path)
    return checkpoints.load(path).id


def load(
    checkpoint: str | os.PathLike | None = None,
    *,
    whisper_model: str | os.PathLike | None = None,
    text_model: str | os.PathLike | None = None,
    face_model: str | os.PathLike | None = None,
    **options,
) -> Predictor:
    """A :class:`Predictor` with every model loaded once. whisper_model, text_model, face_model: a name or local
    path for each frozen model (its :class:`EncoderSources`); options (device, chunk_s) as for :class:`Predictor`."""
    sources = EncoderSources(whisper=whisper_model, text=text_model, face=face_model)
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
    options: whisper_model, text_model, face_model, device (see :func:`load`).
    """
    key = None if checkpoint is None else os.fspath(checkpoint)
    options = tuple(sorted((k, None if v is None else str(v)) for k, v in options.items()))
    return _cached_predictor(key, options).predict(video_path, segments=segments, window_s=window_s)


class _Speakers:
    """The pieces of a recording passed through unchanged, their speech spans and voice prints kept (192 floats per
    0.4 s of speech: about 1.7 MB an hour) to be clustered once the whole recording has been read, so that the
    speaker labels are the same in every chunk; and the main face's mouth motion at each sampled frame with whether
    speech is heard then (about 0.2 MB an hour), to tell which speaker is on camera."""

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

    def turns(self, seconds: float, n_speakers: int | None) -> list[Turn]:
        prints = np.concatenate(self.prints) if self.prints else np.zeros((0, EMBEDDING), np.float32)
        times = np.concatenate(self.times) if self.times else np.zeros((0, 2))
        return diarize_prints(self.spans, prints, times[:, 0], times[:, 1], seconds, speakers=n_speakers)

    def face_motion(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) face frame times, (n,) mouth motion (NaN without a face), (n,) bool speech heard; empty without
        video."""
        if not self.frames:
            return np.zeros(0), np.zeros(0, np.float32), np.zeros(0, bool)
        return tuple(np.concatenate(column) for column in zip(*self.frames))


def with_speakers(
    prediction: Prediction, turns: list[Turn], on_camera: dict[str, bool | None] | None = None
) -> Prediction:
    """The prediction with a speaker column (who covers most of each segment; "" where no one speaks), an
    on_camera_speaking column (whether the face shown is that speaker: True, False or None for unknown, see
    alignment.active_speaker.segments_on_camera) and, in its summary, the duration-weighted probabilities and label
    of each speaker's segments with whether they are on camera. on_camera: per speaker (speaker_on_camera); None:
    unknown for all."""
    on_camera = on_camera or {}
    timeline = prediction.timeline.copy()
    speakers = label_segments(turns, list(zip(timeline["start"], timeline["end"])))
    timeline.insert(3, "speaker", [label or "" for label in speakers])
    column = segments_on_camera(speakers, timeline["face_present"].tolist(), on_camera)
    timeline.insert(5, "on_camera_speaking", pd.Series(column, index=timeline.index, dtype=object))
    named = sorted({t.speaker for t in turns}, key=lambda name: int(name[1:]))
    summary = dict(prediction.summary)
    summary["speakers"] = speaker_summaries(
        timeline, prediction.labels, {s: {"on_camera": on_camera.get(s)} for s in named}
    )
    return dataclasses.replace(prediction, timeline=timeline, summary=summary, turns=turns)


def speaker_summaries(timeline: pd.DataFrame, labels: tuple[str, ...], speakers: dict[str, dict]) -> dict:
    """{speaker: {"probabilities", "label", "seconds", "on_camera"}} for each speaker of `speakers` (whose
    "on_camera" is kept): the duration-weighted mean over that speaker's segments of timeline."""
    return {
        speaker: {
            **_weighted_summary(timeline[timeline["speaker"] == speaker], labels),
            "on_camera": known["on_camera"],
        }
        for speaker, known in speakers.items()
    }
