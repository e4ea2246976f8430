"""Training on real features: the loss goes down, the checkpoint loads, the metrics are the named ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fusion import checkpoint as checkpoints
from fusion.labels import EMOTIONS
from fusion.model import FusionConfig
from fusion.training.augment import AugmentConfig
from fusion.training.cache import FeatureCache
from fusion.training.datasets import image_folder, meld, save_manifest
from fusion.training.metrics import score
from fusion.training.train import TrainConfig, balanced_weights, fit, predict_proba


@pytest.fixture(scope="module")
def small_corpus(shared):
    """40 FER2013 faces and 40 MELD transcripts: real data, cheap features."""
    faces = image_folder(shared / "data/fer2013/validation").examples
    rows = meld(shared / "data/meld-text/dev_sent_emo.csv").examples
    rng = np.random.default_rng(0)
    picked = [faces[i] for i in rng.choice(len(faces), 40, replace=False)]
    picked += [rows[i] for i in rng.choice(len(rows), 40, replace=False)]
    return picked


def test_short_training_lowers_the_loss_and_saves_a_loadable_checkpoint(small_corpus, tmp_path):
    features, report = FeatureCache(tmp_path / "cache").build(small_corpus, progress=False)
    assert not report.skipped
    labels = [e.label for e in small_corpus]
    config = TrainConfig(epochs=6, batch_size=16, learning_rate=2e-3, augment=AugmentConfig(enabled=False))
    result = fit(
        features,
        labels,
        groups=[e.dataset for e in small_corpus],
        train_config=config,
        model_config=FusionConfig(dropout=0.0),
    )
    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < losses[0] * 0.8, losses

    folder = checkpoints.save(
        checkpoints.Checkpoint(result.model, checkpoints.EncoderNames("tiny.en", "t"), 5.0), tmp_path / "ckpt"
    )
    loaded = checkpoints.load(folder).model
    np.testing.assert_array_equal(predict_proba(result.model, features), predict_proba(loaded, features))
    probabilities = predict_proba(loaded, features)
    assert probabilities.shape == (len(features), len(EMOTIONS))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_train_command_on_a_manifest(small_corpus, tmp_path):
    manifest = tmp_path / "manifest.csv"
    save_manifest(small_corpus, manifest)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusion.cli",
            "train",
            "--data",
            f"manifest={manifest}",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "model"),
            "--epochs",
            "2",
            "--batch-size",
            "16",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "model/training.json").read_text())
    assert summary["examples"]["train"] + summary["examples"]["validation"] == len(small_corpus)
    assert len(summary["history"]) >= 1 and "ua" in summary["history"][0]
    assert checkpoints.load(tmp_path / "model").model.config.labels == EMOTIONS


def test_balanced_weights_give_groups_and_classes_equal_shares():
    labels = ["anger"] * 90 + ["fear"] * 10 + ["anger"] * 5 + ["neutral"] * 5
    groups = ["big"] * 100 + ["small"] * 10
    weights = balanced_weights(labels, groups)
    share = {
        key: float(weights[[i for i, k in enumerate(zip(groups, labels)) if k == key]].sum())
        for key in set(zip(groups, labels))
    }
    for value in share.values():
        assert abs(value / float(weights.sum()) - 0.25) < 1e-9


def test_metric_names_mean_what_they_say():
    true = ["anger"] * 8 + ["fear"] * 2
    predicted = ["anger"] * 8 + ["anger", "fear"]
    scores = score(true, predicted, EMOTIONS)
    assert scores.wa == pytest.approx(0.9)  # accuracy
    assert scores.ua == pytest.approx((1.0 + 0.5) / 2)  # mean recall over the classes present
    assert scores.recall == {"anger": 1.0, "fear": 0.5}
    assert scores.confusion[0][0] == 8 and scores.n == 10
