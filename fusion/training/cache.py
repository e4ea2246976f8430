"""Feature cache: every example's encoder inputs are computed once and stored on disk.

An entry is keyed by the example's content (the file's bytes, or a transcript) and by the settings that produce
its features (model names, frame rate, feature parameters, CACHE_VERSION), so training runs and ablations never
decode or transcribe the same file twice, and a change of settings never reads stale features. Entries are
.npz files of plain arrays (no pickle), written atomically: an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from encoders.loading import EncoderSources
from encoders.text import Utterance, Word
from fusion.checkpoint import feature_parameters
from fusion.errors import FileError
from fusion.experts.state import save_npz
from fusion.media.decoding import DEFAULT_FPS
from fusion.media.features import FeatureExtractor, RecordingFeatures, image_features
from fusion.training.datasets import IMAGE_SUFFIXES, Example

CACHE_VERSION = 1  # bump when the code computes different features from the same settings
WORD_SECONDS = 0.3  # seconds per word given to a transcript without media: conversational English, ~200 words/min


@dataclass
class CacheReport:
    """What a build did: entries read from disk, entries computed, and examples skipped with the reason."""

    loaded: int = 0
    computed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # entries that could not be read back, recomputed

    def __str__(self) -> str:
        lines = [f"{self.loaded} cached, {self.computed} computed, {len(self.skipped)} skipped"]
        if self.damaged:
            lines[0] += f", {len(self.damaged)} damaged cache entries recomputed"
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


class FeatureCache:
    """Features of labelled examples, computed on first use and read from `directory` afterwards.

    The frozen models are loaded only when an entry is missing. Model choices follow the usual order: sources,
    then FUSION_WHISPER_MODEL / FUSION_TEXT_MODEL / FUSION_FACE_MODEL, then the default names.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        sources: EncoderSources | None = None,
        fps: float = DEFAULT_FPS,
    ):
        self.directory = Path(directory)
        self.sources = (sources or EncoderSources()).resolve()
        self.fps = fps
        self._extractor: FeatureExtractor | None = None

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(sources=self.sources, fps=self.fps)
        return self._extractor

    def build(
        self, examples: Sequence[Example], *, progress: bool = True
    ) -> tuple[list[RecordingFeatures | None], CacheReport]:
        """Features for every example (None where it was skipped), and a report of what happened."""
        report = CacheReport()
        features: list[RecordingFeatures | None] = []
        bar = tqdm(examples, desc="features", unit="file", disable=not progress)
        for example in bar:
            try:
                entry = self._entry(example)  # reads the file: a missing or unreadable one is skipped here
                cached = read_entry(entry, functools.partial(_read, path=example.path), report)
                if cached is not None:
                    features.append(cached)
                    report.loaded += 1
                    continue
                computed = example_features(self.extractor, example)
            except (FileError, OSError) as error:  # this file's; a model that cannot load stops the build
                report.skipped.append((example.path, str(error)))
                features.append(None)
                continue
            _write(entry, computed)
            features.append(computed)
            report.computed += 1
            bar.set_postfix(cached=report.loaded, computed=report.computed, skipped=len(report.skipped), refresh=False)
        return features, report

    def _entry(self, example: Example) -> Path:
        if is_transcript_only(example):
            kind, content = "text", f"{example.text}\n{_transcript_duration(example)}".encode()
            settings = {"text_model": self.sources.text}
        elif Path(example.path).suffix.lower() in IMAGE_SUFFIXES:
            kind, content = "image", Path(example.path).read_bytes()
            settings = {"face": feature_parameters()["face"]}
        else:
            kind, content = "media", Path(example.path).read_bytes()
            settings = {
                "whisper_model": self.sources.whisper,
                "text_model": self.sources.text,
                "face_model": self.sources.face or "haar",
                "fps": self.fps,
                "features": feature_parameters(),
            }
        digest = hashlib.sha256(content)
        digest.update(json.dumps({"kind": kind, "version": CACHE_VERSION, **settings}, sort_keys=True).encode())
        key = digest.hexdigest()
        return self.directory / key[:2] / f"{key}.npz"


def example_features(extractor: FeatureExtractor, example: Example) -> RecordingFeatures:
    """An example's features: a transcript without media spread over WORD_SECONDS a word, an image as one face
    frame, anything else decoded and encoded by the extractor."""
    if is_transcript_only(example):
        return extractor.text_only(example.text, _transcript_duration(example), path=example.path)
    if Path(example.path).suffix.lower() in IMAGE_SUFFIXES:
        return image_features(example.path)
    return extractor(example.path)


# What np.load and the readers raise on an entry that is truncated, overwritten or not an npz of the expected arrays
DAMAGED_ENTRY_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def read_entry(entry: Path, read, report: CacheReport):
    """read(entry) if the entry exists and reads back; None if it must be computed. A damaged entry (a disk full
    mid-write, a copy cut short) is removed and listed in report.damaged, so it is recomputed instead of loaded."""
    if not entry.is_file():
        return None
    try:
        return read(entry)
    except DAMAGED_ENTRY_ERRORS:
        report.damaged.append(str(entry))
        entry.unlink(missing_ok=True)
        return None


def is_transcript_only(example: Example) -> bool:
    """A transcript row without media (MELD text, a text-only csv row): its features come from the text alone."""
    return example.modalities == ("text",) and example.text is not None


def _transcript_duration(example: Example) -> float:
    """Seconds a transcript's words are spread over: a speaking rate of WORD_SECONDS per word."""
    return WORD_SECONDS * max(1, len(example.text.split()))


def _write(entry: Path, features: RecordingFeatures) -> None:
    """Store features as plain arrays; write to a temporary name and rename, so a crash leaves no partial entry."""
    words = [w for u in features.utterances for w in u.words]
    arrays = {
        "duration": np.float64(features.duration),
        "word_embeddings": features.word_embeddings,
        "word_text": np.array([w.text for w in words], dtype=str),
        "word_times": np.array([(w.start, w.end) for w in words], dtype=np.float64).reshape(-1, 2),
        "word_utterance": np.array([i for i, u in enumerate(features.utterances) for _ in u.words], dtype=np.int64),
        "utterance_text": np.array([u.text for u in features.utterances], dtype=str),
        "utterance_times": np.array([(u.start, u.end) for u in features.utterances], dtype=np.float64).reshape(-1, 2),
    }
    optional = {
        "mel": features.mel,
        "face_crops": features.face_crops,
        "face_times": features.face_times,
        "face_present": features.face_present,
    }
    arrays |= {name: value for name, value in optional.items() if value is not None}
    save_npz(entry, arrays)


def _read(entry: Path, path: str) -> RecordingFeatures:
    with np.load(entry, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    words = [Word(str(t), float(a), float(b)) for t, (a, b) in zip(arrays["word_text"], arrays["word_times"])]
    utterances = [
        Utterance(
            str(text),
            float(start),
            float(end),
            tuple(w for w, u in zip(words, arrays["word_utterance"]) if u == i),
        )
        for i, (text, (start, end)) in enumerate(zip(arrays["utterance_text"], arrays["utterance_times"]))
    ]
    return RecordingFeatures(
        path=path,
        duration=float(arrays["duration"]),
        mel=arrays.get("mel"),
        utterances=utterances,
        word_embeddings=arrays["word_embeddings"],
        face_crops=arrays.get("face_crops"),
        face_times=arrays.get("face_times"),
        face_present=arrays.get("face_present"),
    )
