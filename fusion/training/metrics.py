"""Classification metrics under their usual names in emotion recognition.

UA (unweighted accuracy) = macro-averaged recall; WA (weighted accuracy) = plain accuracy; macro-F1; weighted F1
(F1 per class weighted by its support, MELD's headline metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


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
