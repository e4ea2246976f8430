"""The shipped default model: loads with no arguments and predicts every real clip and an audio-only file."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fusion
from fusion.labels import EMOTIONS
from fusion.predictor import DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def default_predictor(shared):
    return fusion.load()


def test_default_checkpoint_is_package_data_and_small():
    weights = DEFAULT_CHECKPOINT / "model.safetensors"
    assert weights.is_file(), "the default model ships inside the package"
    assert weights.stat().st_size < 8_000_000
    config = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    assert config["encoders"] == {"whisper": "tiny.en", "text": "sentence-transformers/all-MiniLM-L6-v2"}


def test_default_model_predicts_every_clip(default_predictor, shared, monkeypatch):
    monkeypatch.delenv("FUSION_CHECKPOINT", raising=False)
    clips = sorted((shared / "data/av-clips").rglob("*.mp4"))
    flac = next((shared / "data/ravdess-speech-16k/Actor_02").glob("*.flac"))
    assert len(clips) == 12
    for path in [*clips, flac]:
        result = default_predictor.predict(path)
        probabilities = result.timeline[list(EMOTIONS)].to_numpy()
        assert np.isfinite(probabilities).all()
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert result.summary["label"] in EMOTIONS
    assert result.summary["modalities"] == ["audio", "text"], "the flac has no video"


def test_predict_without_checkpoint_argument_uses_the_default(shared, ravdess_clips, monkeypatch):
    monkeypatch.delenv("FUSION_CHECKPOINT", raising=False)
    result = fusion.predict(ravdess_clips[0])
    assert result.summary["label"] in EMOTIONS
