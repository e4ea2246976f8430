"""Classification metrics under their usual names in emotion recognition, defined here once.

UA (unweighted accuracy) = macro-averaged recall; WA (weighted accuracy) = plain accuracy; macro-F1; weighted F1
(F1 per class weighted by its support, MELD's headline metric). :func:`score` computes them from labels;
:func:`metrics_from_confusion` computes the same from confusion counts, vectorised over many confusion matrices
(the bootstrap of :mod:`fusion.training.statistics`); a test holds the two to agreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

METRICS = ("ua", "wa", "macro_f1", "weighted_f1")  # the keys of metrics_from_confusion, fields of Scores


@dataclass(frozen=True)
class Scores:
    ua: float
    wa: float
    macro_f1: float
    weighted_f1: float
    recall: dict[str, float]  # per class present in the true labels
    confusion: list[list[int]]  # rows: true label, columns: predicted, in `labels` order
    labels: tuple[str, ...]
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def score(true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> Scores:
    """Scores of predicted against true labels; classes absent from `true` do not count in the macro averages."""
    # imported here: scikit-learn takes about half a second to import, which every `fusion` command would pay
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    present = [label for label in labels if label in set(true)]
    recalls = recall_score(true, predicted, labels=present, average=None, zero_division=0)
    return Scores(
        ua=float(np.mean(recalls)),
        wa=float(accuracy_score(true, predicted)),
        macro_f1=float(f1_score(true, predicted, labels=present, average="macro", zero_division=0)),
        weighted_f1=float(f1_score(true, predicted, labels=present, average="weighted", zero_division=0)),
        recall=dict(zip(present, map(float, recalls))),
        confusion=confusion_matrix(true, predicted, labels=list(labels)).tolist(),
        labels=tuple(labels),
        n=len(true),
    )


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """UA, WA, macro-F1 and weighted F1 of (..., K, K) confusion counts, as fusion.training.metrics.score computes them.

    Classes absent from the true labels do not count in the macro averages; a class never predicted has
    precision 0. Returns arrays of shape (...).
    """
    support = confusion.sum(-1)  # (..., K) true examples per class
    predicted = confusion.sum(-2)
    hits = np.diagonal(confusion, axis1=-2, axis2=-1)
    present = support > 0
    total = support.sum(-1)
    recall = np.divide(hits, support, out=np.zeros_like(hits, dtype=np.float64), where=present)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits, dtype=np.float64), where=predicted > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    n_present = present.sum(-1)
    return {
        "ua": (recall * present).sum(-1) / n_present,
        "wa": hits.sum(-1) / total,
        "macro_f1": (f1 * present).sum(-1) / n_present,
        "weighted_f1": (f1 * support).sum(-1) / total,
    }


ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al., 2017)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the share of rows in each bin."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            error += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(error)
