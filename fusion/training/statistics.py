"""Bootstrap intervals of the metrics over test examples, for paired comparisons of systems on one test set.

The metrics are those of :mod:`fusion.training.metrics` (:func:`~fusion.training.metrics.metrics_from_confusion`),
computed on the confusion counts of every resample at once.
"""

from __future__ import annotations

import numpy as np

from fusion.training.metrics import METRICS, metrics_from_confusion


def confusion_counts(true: np.ndarray, predicted: np.ndarray, weights: np.ndarray, n_labels: int) -> np.ndarray:
    """Confusion matrices of resampled test sets.

    true, predicted: (N,) label indices; weights: (B, N) how often each example is drawn in each of B resamples
    returns (B, n_labels, n_labels) counts, rows true label, columns predicted
    """
    cells = np.zeros((len(true), n_labels * n_labels), dtype=np.float64)
    cells[np.arange(len(true)), true * n_labels + predicted] = 1.0
    return (weights @ cells).reshape(-1, n_labels, n_labels)


def bootstrap(
    true: np.ndarray,
    predicted: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    n_labels: int,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Each metric of `predicted` (minus that of `reference`, if given) with a percentile bootstrap interval.

    true: (N,) label indices; predicted, reference: (S, N) label indices, one row per training seed. A metric is
    computed over all N examples (pooled) and averaged over the S seeds. A resample draws N examples with
    replacement and uses the same draw for every seed and for both systems, so with a reference the interval is
    that of the paired difference. Returns {metric: {"value", "low", "high"}}.
    """
    draws = np.random.default_rng(seed).multinomial(len(true), np.full(len(true), 1 / len(true)), size=resamples)
    weights = np.concatenate([np.ones((1, len(true))), draws])  # row 0: the test set as it is
    values = _seed_mean_metrics(true, predicted, weights, n_labels)
    if reference is not None:
        reference_values = _seed_mean_metrics(true, reference, weights, n_labels)
        values = {m: values[m] - reference_values[m] for m in METRICS}
    tail = 100 * (1 - confidence) / 2
    out = {}
    for m in METRICS:
        low, high = np.percentile(values[m][1:], [tail, 100 - tail])
        out[m] = {"value": float(values[m][0]), "low": float(low), "high": float(high)}
    return out


def _seed_mean_metrics(
    true: np.ndarray, predicted: np.ndarray, weights: np.ndarray, n_labels: int
) -> dict[str, np.ndarray]:
    """predicted (S, N), weights (B, N) -> {metric: (B,)} each resample's metric, averaged over the S seeds."""
    per_seed = [metrics_from_confusion(confusion_counts(true, row, weights, n_labels)) for row in predicted]
    return {m: np.mean([values[m] for values in per_seed], axis=0) for m in METRICS}
