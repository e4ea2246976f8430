"""What the caches share: an example's features by its kind, and a damaged entry computed again, not loaded."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.media.features import FeatureExtractor
from fusion.storage import save_npz
from fusion.training.cache import CacheReport, example_features, read_entry
from fusion.training.datasets import image_folder, meld, ravdess


@pytest.fixture(scope="module")
def examples(shared):
    clips = ravdess(shared / "data/av-clips/ravdess").examples[:1]
    faces = image_folder(shared / "data/fer2013/validation").examples[:2]
    rows = meld(shared / "data/meld-text/dev_sent_emo.csv").examples[:2]
    return clips + faces + rows


def test_modalities_of_each_kind(examples):
    extractor = FeatureExtractor()
    features = [example_features(extractor, e) for e in examples]
    assert [f.modalities for f in features] == [("audio", "text", "video")] + [("video",)] * 2 + [("text",)] * 2
    assert all(f.face_crops.shape == (1, 48, 48) for f in features[1:3])
    assert [" ".join(w.text for u in f.utterances for w in u.words) for f in features[3:]] == [
        e.text for e in examples[3:]
    ]


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"\x00" * len(b), lambda b: b""])
def test_a_damaged_entry_is_recomputed_not_loaded(tmp_path, damage):
    entry = tmp_path / "ab" / "entry.npz"
    save_npz(entry, {"values": np.arange(10.0)})
    report = CacheReport()
    assert read_entry(entry, lambda e: np.load(e)["values"].sum(), report) == 45.0
    entry.write_bytes(damage(entry.read_bytes()))
    assert read_entry(entry, lambda e: np.load(e)["values"].sum(), report) is None
    assert report.damaged == [str(entry)] and not entry.exists()
    assert "1 damaged cache entries recomputed" in str(report)
