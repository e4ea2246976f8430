"""The statistics of modality ablations: paired bootstrap intervals and metrics on resampled confusion counts."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.labels import EMOTIONS
from fusion.training.metrics import METRICS, metrics_from_confusion, score
from fusion.training.statistics import bootstrap, confusion_counts


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
