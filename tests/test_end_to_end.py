"""End to end on the real clips: the shipped model predicts every clip through the API and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import fusion
from fusion.labels import EMOTIONS
from fusion.media.features import FeatureExtractor
from fusion.serving.predictor import DEFAULT_CHECKPOINT, _cached_predictor


@pytest.fixture(scope="module")
def clips(ravdess_clips, no_audio_clip):
    return [*ravdess_clips, no_audio_clip]


@pytest.fixture(scope="module")
def extractor(shared):
    return FeatureExtractor()


@pytest.fixture(scope="module")
def features(extractor, clips):
    return [extractor(path) for path in clips]


@pytest.fixture(scope="module")
def checkpoint(shared):
    return DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return fusion.load(checkpoint)


def test_features_have_the_expected_modalities(features, clips):
    for path, f in zip(clips, features):
        expected = ("video",) if "no-audio" in str(path) else ("audio", "text", "video")
        assert f.modalities == expected, path.name
        assert set(f.timings) >= {"decode", "face_detection"}


def test_predict_every_clip(predictor, clips, features):
    for path, clip_features in zip(clips, features):
        result = predictor.predict(path)
        timeline = result.timeline
        assert list(timeline.columns[:4]) == ["start", "end", "text", "face_present"]
        assert list(timeline.columns[4:11]) == list(EMOTIONS)
        assert (timeline.label != "").all(), f"{path.name}: every segment has a modality"
        np.testing.assert_allclose(timeline[list(EMOTIONS)].sum(axis=1), 1.0, atol=1e-5)
        assert set(timeline.label) <= set(EMOTIONS)
        assert timeline.start.iloc[0] == 0 and abs(timeline.end.iloc[-1] - result.duration) < 1e-3
        assert abs(sum(result.summary.probabilities.values()) - 1) < 1e-5
        assert result.summary.label in EMOTIONS
        assert {"decode", "face_detection", "experts"} <= set(result.timings)

        if "no-audio" in str(path):
            assert result.summary.modalities == ("video",)
            assert (timeline.modalities == "video").all(), "audio and text are absent"
            assert (timeline.face_present > 0.9).all()
            continue
        assert {"log_mel", "whisper", "whisper_states"} <= set(result.timings)
        spoken = timeline[timeline.text != ""]
        assert "door" in " ".join(spoken.text).lower()
        assert all(m == "audio,text,video" for m in spoken.modalities)
        # The spoken segments cover every word Whisper heard.
        for word in (w for u in clip_features.utterances for w in u.words):
            middle = (word.start + word.end) / 2
            assert any(s.start - 1e-3 <= middle <= s.end + 1e-3 for s in spoken.itertuples()), word


def test_short_recordings_are_read_without_the_decoding_process(predictor):
    """Every clip here is short: read in this process, no decoding process started (its start-up would cost more)."""
    assert predictor.extractor._decode_worker is None


def test_predict_function_reuses_loaded_models(checkpoint, clips):
    first = fusion.predict(clips[0], checkpoint=checkpoint)
    again = fusion.predict(clips[0], checkpoint=checkpoint)
    assert first.timeline.equals(again.timeline)
    assert _cached_predictor.cache_info().hits >= 1, "the second call reused the loaded models"


def test_command_line_json_for_every_clip(checkpoint, clips):
    for path in clips:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "fusion.cli",
                "predict",
                str(path),
                "--checkpoint",
                str(checkpoint),
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert run.stderr == "", "no progress bars or library warnings on stderr"
        result = json.loads(run.stdout)
        assert set(result) >= {"file", "duration", "segments", "summary"}
        assert result["file"] == str(path) and result["summary"]["label"] in EMOTIONS
        for segment in result["segments"]:
            assert set(segment) >= {"start", "end", "text", "modalities", "probabilities", "label"}
            assert abs(sum(segment["probabilities"].values()) - 1) < 1e-5
        if "no-audio" in str(path):
            assert all(segment["modalities"] == ["video"] for segment in result["segments"])


def test_command_line_reports_bad_input_without_traceback(checkpoint, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    run = subprocess.run(
        [sys.executable, "-m", "fusion.cli", "predict", str(empty), "--checkpoint", str(checkpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "empty.mp4" in run.stderr and "Traceback" not in run.stderr


def test_predict_without_any_checkpoint_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSION_CHECKPOINT", raising=False)
    monkeypatch.setattr("fusion.serving.predictor.DEFAULT_CHECKPOINT", tmp_path / "not-installed")
    with pytest.raises(fusion.CheckpointError, match="No checkpoint given"):
        fusion.load()


def test_bad_files_raise_media_error_naming_the_file(predictor, ravdess_clips, tmp_path):
    empty = tmp_path / "zero.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.mp4"
    data = ravdess_clips[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    for bad in (empty, truncated, text):
        with pytest.raises(fusion.MediaError, match=bad.name):
            predictor.predict(bad)


def test_missing_model_names_it_and_how_to_fix(checkpoint):
    with pytest.raises(fusion.ModelNotFoundError, match="FUSION_WHISPER_MODEL"):
        fusion.load(checkpoint, whisper_model="/nonexistent/whisper.pt")
