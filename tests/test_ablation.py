"""Modality ablations: the harness on a small real subset, its statistics, and dropping modalities at inference."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from operator import itemgetter

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from fusion.labels import EMOTIONS, MODALITIES, ravdess_fields
from fusion.media.features import RecordingFeatures
from fusion.model import FusionConfig, FusionModel
from fusion.training.ablation import AblationConfig, ablate
from fusion.training.augment import AugmentConfig
from fusion.training.cache import FeatureCache
from fusion.training.datasets import ravdess, save_manifest
from fusion.training.metrics import METRICS, metrics_from_confusion, score
from fusion.training.statistics import bootstrap, confusion_counts
from fusion.training.train import TrainConfig, predict_proba

ACTORS = ("ravdess:01", "ravdess:02", "ravdess:03")
ARGUMENTS = ["--folds", "3", "--seeds", "1", "--epochs", "2", "--batch-size", "8", "--no-augment"]


@pytest.fixture(scope="module")
def small_ravdess(shared, tmp_path_factory):
    """18 real RAVDESS speech files (3 actors x 6 emotions), as a manifest, with their features cached."""
    examples = ravdess(shared / "data/ravdess-speech-16k").examples
    picked = []
    for actor in ACTORS:
        first_takes = [  # normal intensity, first statement, first repetition: one file per native emotion
            e
            for e in examples
            if e.speaker == actor
            and itemgetter("intensity", "statement", "repetition")(ravdess_fields(e.path)) == ("01",) * 3
        ]
        picked += list({e.label: e for e in first_takes}.values())[:6]  # six canonical classes
    folder = tmp_path_factory.mktemp("ablation")
    save_manifest(picked, folder / "manifest.csv")
    _, report = FeatureCache(folder / "cache").build(picked, progress=False)
    assert not report.skipped
    return folder


def test_ablate_command_writes_the_documented_files_and_repeats_its_numbers(small_ravdess, tmp_path):
    spec = f"manifest={small_ravdess / 'manifest.csv'}"
    command = [sys.executable, "-m", "fusion.cli", "ablate", spec, "--cache", str(small_ravdess / "cache")]
    run = subprocess.run([*command, *ARGUMENTS, "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr

    record = json.loads((tmp_path / "cli/ablation.json").read_text())
    markdown = (tmp_path / "cli/ablation.md").read_text()
    assert record["data"]["modalities"] == ["audio", "text"]
    folds = [set(fold["test_speakers"]) for fold in record["data"]["folds"]]
    assert sorted(s for fold in folds for s in fold) == sorted(ACTORS), "every actor is tested in exactly one fold"
    rows = [(row["mode"], row["subset"]) for row in record["rows"]]
    assert rows == [
        ("retrain", "audio"),
        ("retrain", "text"),
        ("retrain", "audio+text"),
        ("drop", "audio"),
        ("drop", "text"),
    ]
    assert len(record["runs"]) == len(rows) * 3  # one per mode, subset and fold (one seed)
    for row in record["rows"]:
        assert set(row["mean"]) == set(row["std"]) == set(METRICS)
        assert row["pooled"]["ua"]["low"] <= row["pooled"]["ua"]["value"] <= row["pooled"]["ua"]["high"]
        assert (row["difference_to_audio"] is None) == (row["subset"] == "audio")
        assert set(row["recall"]) <= set(record["data"]["labels"])
        runs = [r["scores"]["ua"] for r in record["runs"] if (r["mode"], r["subset"]) == (row["mode"], row["subset"])]
        assert row["mean"]["ua"] == pytest.approx(np.mean(runs))
        assert f"| {row['mode']} | {row['subset']} | {row['mean']['ua'] * 100:.1f} ± " in markdown
    assert len(record["predictions"]["true"]) == 18
    assert all(len(seeds) == 1 and len(seeds[0]) == 18 for k, seeds in record["predictions"].items() if ":" in k)

    assert "Command: `python -m fusion.cli ablate manifest=" in markdown
    assert "Machine: " in markdown and "Wall time" in markdown
    assert "| retrain | audio+text |" in markdown and "| drop | text |" in markdown and "Recall per class" in markdown
    image = imread(tmp_path / "cli/ablation.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # The library function with the same settings gives the same numbers: same seeds, same results.
    config = AblationConfig(
        seeds=(0,), folds=3, train=TrainConfig(epochs=2, batch_size=8, augment=AugmentConfig(enabled=False))
    )
    again = ablate([spec], cache_dir=small_ravdess / "cache", out=tmp_path / "library", config=config)
    assert again == record["rows"]


def test_identical_subsets_differ_by_zero_with_an_interval_containing_zero():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, 150)
    predicted = np.where(rng.random((3, 150)) < 0.5, true, rng.integers(0, 4, (3, 150)))
    difference = bootstrap(true, predicted, predicted.copy(), n_labels=4, resamples=500)
    for metric in METRICS:
        assert difference[metric]["value"] == 0.0
        assert difference[metric]["low"] <= 0.0 <= difference[metric]["high"]


def test_a_subset_that_holds_the_label_gives_an_interval_above_zero():
    """A 'modality' built from the label (right 60% of the time) against chance, as the statistics see them."""
    rng = np.random.default_rng(2)
    true = rng.integers(0, 5, 200)
    chance = rng.integers(0, 5, (3, 200))
    informed = np.where(rng.random((3, 200)) < 0.6, true, rng.integers(0, 5, (3, 200)))
    difference = bootstrap(true, informed, chance, n_labels=5, resamples=1000)
    for metric in METRICS:
        assert difference[metric]["low"] > 0.0, (metric, difference[metric])
        assert difference[metric]["low"] <= difference[metric]["value"] <= difference[metric]["high"]


def test_resampled_metrics_match_fusion_metrics_score():
    """Vectorised metrics on confusion counts equal score() on the examples each resample draws."""
    rng = np.random.default_rng(3)
    labels = EMOTIONS[:5]
    true = rng.integers(0, 4, 60)  # the fifth class is never true but can be predicted
    predicted = rng.integers(0, 5, 60)
    draws = rng.multinomial(60, np.full(60, 1 / 60), size=4)
    values = metrics_from_confusion(confusion_counts(true, predicted, draws.astype(float), len(labels)))
    for b, weights in enumerate(draws):
        rows = np.repeat(np.arange(60), weights)
        expected = score([labels[i] for i in true[rows]], [labels[i] for i in predicted[rows]], labels)
        for metric in METRICS:
            assert values[metric][b] == pytest.approx(getattr(expected, metric), abs=1e-12)


@pytest.fixture(scope="module")
def three_modality_features(shared, small_ravdess) -> list[RecordingFeatures]:
    """Real features of 3 audio-visual RAVDESS clips and the clip without audio."""
    clips = sorted((shared / "data/av-clips/ravdess").glob("*.mp4"))[:3] + [
        shared / "data/av-clips/no-audio/01-01-08-02-01-01-19.mp4"
    ]
    examples = ravdess(shared / "data/av-clips").examples
    picked = [e for e in examples if any(e.path.endswith(c.name) for c in clips)]
    features, report = FeatureCache(small_ravdess / "cache").build(picked, progress=False)
    assert not report.skipped
    return features


def _without(features: RecordingFeatures, modality: str) -> RecordingFeatures:
    """The same recording as if it had never had the modality: no audio track, no words, or no video track."""
    if modality == "audio":
        return dataclasses.replace(features, mel=None)
    if modality == "text":
        return dataclasses.replace(features, utterances=[], word_embeddings=features.word_embeddings[:0])
    return dataclasses.replace(features, face_crops=None, face_times=None, face_present=None)


def test_dropping_at_inference_gives_exactly_the_outputs_without_the_modality(three_modality_features):
    torch.manual_seed(0)
    untrained_tiny_model = FusionModel(FusionConfig(dim=32, heads=2, layers=2, dropout=0.0)).eval()  # masking only
    everything = predict_proba(untrained_tiny_model, three_modality_features)
    for kept in [("audio",), ("text",), ("video",), ("audio", "text"), ("audio", "video"), ("text", "video")]:
        stripped = three_modality_features
        for modality in set(MODALITIES) - set(kept):
            stripped = [_without(f, modality) for f in stripped]
        dropped = predict_proba(untrained_tiny_model, three_modality_features, modalities=kept)
        np.testing.assert_array_equal(dropped, predict_proba(untrained_tiny_model, stripped), err_msg=str(kept))
        assert not np.allclose(dropped, everything), f"dropping to {kept} changed nothing"
