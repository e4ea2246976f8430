"""`fusion evaluate`: a labelled set scored through exactly the path users get, `Predictor.predict` per file.

Each recording goes through decoding, voice activity, segments, the experts and their fusion, as `fusion.predict`
runs them; its predicted label is its summary's (the duration-weighted mean over its segments). The scores are UA
(macro recall), WA (accuracy), macro and weighted F1, per-class recall, the confusion matrix and the expected
calibration error of the summaries' probabilities. A file that cannot be predicted is listed with its error and
counted as a miss (its predicted label: none), so one bad file never hides the others nor flatters the figures.

    fusion evaluate ravdess=$FUSION_SHARED/data/ravdess-speech-16k --experts voice,text --format json
    fusion evaluate my_interviews.csv --confusion confusion.png     # a csv of path, label[, speaker]
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from fusion.errors import FusionError
from fusion.labels import EMOTIONS
from fusion.serving.predictor import Predictor
from fusion.training.datasets import Example, from_spec
from fusion.training.metrics import expected_calibration_error, score

NONE = "none"  # the predicted label of a file that has none: no modality anywhere, or an error


@dataclass
class Evaluation:
    """What `fusion evaluate` measured on a labelled set."""

    data: list[str]
    experts: list[str]  # the bundle's experts that took part
    model_id: str
    files: int
    scores: dict  # fusion.training.metrics.Scores.as_dict(): ua, wa, macro_f1, weighted_f1, recall, confusion
    ece: float  # expected calibration error of the summaries' probabilities, over the files predicted
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files that could not be predicted
    predictions: list[dict] = field(default_factory=list)  # per file: path, label, predicted, probabilities
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        s = self.scores
        lines = [
            f"{', '.join(self.data)}: {self.files} files through fusion.predict, experts {'+'.join(self.experts)}"
            f" (model {self.model_id}), {self.seconds:.0f} s",
            f"UA {100 * s['ua']:.1f}  WA {100 * s['wa']:.1f}  macro-F1 {100 * s['macro_f1']:.1f}  "
            f"weighted F1 {100 * s['weighted_f1']:.1f}  ECE {100 * self.ece:.1f}",
            "recall: " + ", ".join(f"{label} {100 * r:.0f}" for label, r in s["recall"].items()),
            "",
            "confusion (rows: true, columns: predicted)",
            " " * 11 + " ".join(f"{label[:7]:>7}" for label in s["labels"]),
        ]
        for label, row in zip(s["labels"], s["confusion"]):
            if sum(row):
                lines.append(f"{label[:10]:<10} " + " ".join(f"{n:>7}" for n in row))
        lines += [f"error {path}: {why}" for path, why in self.errors]
        return "\n".join(lines) + "\n"


def examples_of(data: str) -> list[Example]:
    """A set named on the command line: KIND=PATH (fusion.training.datasets.from_spec) or a csv file of path,
    label[, speaker]."""
    if "=" not in data and data.lower().endswith(".csv"):
        data = f"csv={data}"
    return from_spec(data).examples


def evaluate(predictor: Predictor, data: Sequence[str], *, progress=None, log_every: int = 0) -> Evaluation:
    """Score every example of data (see examples_of) through predictor.predict."""
    started = time.perf_counter()
    examples = [e for spec in data for e in examples_of(spec)]
    labels, predicted, probabilities, errors, rows = [], [], [], [], []
    for number, example in enumerate(progress(examples) if progress else examples, 1):
        try:
            summary = predictor.predict(example.path).summary
            guess = summary.label or NONE
            p = [summary.probabilities[e] for e in EMOTIONS] if summary.label else None
        except FusionError as error:  # this file's (unreadable, no modality, ...): a miss, reported
            errors.append((example.path, str(error)))
            guess, p = NONE, None
        labels.append(example.label)
        predicted.append(guess)
        probabilities.append(p)
        rows.append({"path": example.path, "label": example.label, "predicted": guess, "probabilities": p})
        if log_every and number % log_every == 0:
            print(f"{number}/{len(examples)} files, {time.perf_counter() - started:.0f} s", flush=True)
    known = [i for i, p in enumerate(probabilities) if p is not None]
    ece = (
        expected_calibration_error(
            np.array([probabilities[i] for i in known]), np.array([EMOTIONS.index(labels[i]) for i in known])
        )
        if known
        else float("nan")
    )
    scores = score(labels, predicted, (*EMOTIONS, NONE) if NONE in predicted else EMOTIONS)
    return Evaluation(
        data=list(data),
        experts=list(predictor.experts),
        model_id=predictor.model_id,
        files=len(examples),
        scores=scores.as_dict(),
        ece=ece,
        errors=errors,
        predictions=rows,
        seconds=time.perf_counter() - started,
    )


def plot_confusion(evaluation: Evaluation, path: str | os.PathLike) -> None:
    """The confusion matrix as a picture (rows: true, columns: predicted; each row as shares of its files)."""
    from matplotlib.figure import Figure

    from fusion.storage import atomic_path

    labels = evaluation.scores["labels"]
    counts = np.array(evaluation.scores["confusion"], dtype=float)
    rows = counts.sum(1) > 0
    shares = counts[rows] / counts[rows].sum(1, keepdims=True)
    figure = Figure(figsize=(1.0 + 0.8 * len(labels), 1.0 + 0.6 * rows.sum()), layout="constrained")
    axes = figure.subplots()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(rows.sum()), [label for label, r in zip(labels, rows) if r])
    for (i, j), n in np.ndenumerate(counts[rows]):
        axes.text(j, i, f"{int(n)}", ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    s = evaluation.scores
    axes.set_title(f"UA {100 * s['ua']:.1f}, WA {100 * s['wa']:.1f} ({'+'.join(evaluation.experts)})", loc="left")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
