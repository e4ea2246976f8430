"""The 30-line baselines a user would write for speech emotion, on the same folds as the voice expert.

- MFCC statistics + SVM: 40 MFCCs and their deltas, mean and standard deviation over time, standardised, an RBF SVM.
- Pooled Whisper states + logistic regression: the mean and standard deviation over time of the Whisper encoder
  states (encoders.whisper_states), standardised, a logistic regression.

Both use scikit-learn's default settings (no tuning on any test fold).
"""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from fusion.labels import RAVDESS_NATIVE
from fusion.training.metrics import Scores, score

N_MFCC = 40
PROBE_C = 1.0  # scikit-learn's default inverse regularisation strength
PROBE_MAX_ITER = 3000  # lbfgs iterations: enough to converge on 768 standardised features


def mfcc_statistics(audio: np.ndarray) -> np.ndarray:
    """(samples,) 16 kHz -> (4 * N_MFCC,) mean and std of MFCCs and their deltas."""
    mfcc = librosa.feature.mfcc(y=audio, sr=16_000, n_mfcc=N_MFCC)
    delta = librosa.feature.delta(mfcc, mode="nearest")
    both = np.concatenate([mfcc, delta])
    return np.concatenate([both.mean(1), both.std(1)])


def mfcc_svm(
    audio: Sequence[np.ndarray],
    labels: np.ndarray,
    train: Sequence[int],
    test: Sequence[int],
    *,
    classes=RAVDESS_NATIVE,
) -> Scores:
    features = np.stack([mfcc_statistics(a) for a in audio])
    model = make_pipeline(StandardScaler(), SVC()).fit(features[train], labels[train])
    return score(list(labels[test]), list(model.predict(features[test])), classes)


def pooled_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, classes=RAVDESS_NATIVE
) -> Scores:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER))
    model.fit(train_x, train_y)
    return score(list(test_y), list(model.predict(test_x)), classes)
