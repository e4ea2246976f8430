"""The feature cache: a second pass over the same files decodes and transcribes nothing, bad files are reported."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.media.features import FeatureExtractor
from fusion.training.cache import FeatureCache
from fusion.training.datasets import Example, image_folder, meld, ravdess


@pytest.fixture(scope="module")
def examples(shared) -> list[Example]:
    clips = ravdess(shared / "data/av-clips/ravdess").examples[:2]
    faces = image_folder(shared / "data/fer2013/validation").examples[:3]
    rows = meld(shared / "data/meld-text/dev_sent_emo.csv").examples[:3]
    return clips + faces + rows


def test_second_pass_reads_everything_from_disk(examples, tmp_path, monkeypatch):
    first, report = FeatureCache(tmp_path).build(examples, progress=False)
    assert (report.loaded, report.computed, report.skipped) == (0, len(examples), [])

    def no_extraction(*args, **kwargs):
        raise AssertionError("the second pass decoded or transcribed a file")

    monkeypatch.setattr(FeatureExtractor, "__call__", no_extraction)
    monkeypatch.setattr(FeatureExtractor, "text_only", no_extraction)
    cache = FeatureCache(tmp_path)
    second, report = cache.build(examples, progress=False)
    assert (report.loaded, report.computed) == (len(examples), 0)
    assert cache._extractor is None, "no model was even loaded"
    for a, b in zip(first, second):
        assert a.modalities == b.modalities and a.duration == b.duration
        assert [u.words for u in a.utterances] == [u.words for u in b.utterances]
        np.testing.assert_array_equal(a.word_embeddings, b.word_embeddings)
        for name in ("mel", "face_crops", "face_times", "face_present"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or np.array_equal(x, y), name


def test_modalities_of_each_kind(examples, tmp_path):
    features, _ = FeatureCache(tmp_path).build(examples, progress=False)
    kinds = [f.modalities for f in features]
    assert kinds == [("audio", "text", "video")] * 2 + [("video",)] * 3 + [("text",)] * 3
    assert all(f.face_crops.shape == (1, 48, 48) for f in features[2:5])


def test_bad_files_are_skipped_with_their_reason_and_cost_nothing_else(examples, tmp_path):
    broken = tmp_path / "01-01-06-01-01-01-05.mp4"
    broken.write_bytes(b"\x00" * 64)
    bad = Example(str(broken), "fear", "fearful", "ravdess:05", "ravdess", ("audio", "text", "video"))
    features, report = FeatureCache(tmp_path / "cache").build([examples[0], bad, examples[2]], progress=False)
    assert features[1] is None and features[0] is not None and features[2] is not None
    assert report.skipped[0][0] == str(broken) and "not a readable media file" in report.skipped[0][1]
    assert "1 skipped" in str(report)


def test_a_missing_file_is_skipped_with_its_reason_and_the_rest_are_built(examples, tmp_path):
    gone = Example(str(tmp_path / "01-01-06-01-01-01-05.mp4"), "fear", "fearful", "ravdess:05", "ravdess", ("audio",))
    features, report = FeatureCache(tmp_path / "cache").build([examples[2], gone, examples[3]], progress=False)
    assert features[1] is None and features[0] is not None and features[2] is not None
    assert report.skipped[0][0] == gone.path and "No such file" in report.skipped[0][1]


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"\x00" * len(b), lambda b: b""])
def test_a_damaged_entry_is_recomputed_not_loaded(examples, tmp_path, damage):
    faces = examples[2:4]
    first, _ = FeatureCache(tmp_path).build(faces, progress=False)
    entries = sorted(tmp_path.rglob("*.npz"))
    assert len(entries) == 2
    entries[0].write_bytes(damage(entries[0].read_bytes()))
    again, report = FeatureCache(tmp_path).build(faces, progress=False)
    assert (report.loaded, report.computed, report.damaged) == (1, 1, [str(entries[0])])
    assert "1 damaged cache entries recomputed" in str(report)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.face_crops, b.face_crops)
    _, report = FeatureCache(tmp_path).build(faces, progress=False)
    assert (report.loaded, report.damaged) == (2, [])


def test_settings_change_the_key(examples, tmp_path):
    FeatureCache(tmp_path, fps=5.0).build(examples[:1], progress=False)
    _, report = FeatureCache(tmp_path, fps=2.0).build(examples[:1], progress=False)
    assert report.computed == 1, "features at another frame rate are not read from the 5 fps entry"
