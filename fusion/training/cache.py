"""What the caches of training and ablation share: reading an entry back, reporting a build, an example's features.

The speech cache (fusion.training.voice.SpeechCache) and the experts' outputs (fusion.training.ablation) key each
entry by the example's content and the settings that made it; entries are .npz files of plain arrays (no pickle),
written atomically (fusion.storage.save_npz), so an interrupted build resumes where it stopped and a damaged entry
is computed again.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from fusion.media.features import FeatureExtractor, RecordingFeatures, image_features
from fusion.training.datasets import IMAGE_SUFFIXES, Example

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
