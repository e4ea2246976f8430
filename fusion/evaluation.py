"""`fusion evaluate`: a labelled set scored through exactly the path users get, `Predictor.predict` per file.

Each recording goes through decoding, voice activity, segments, the experts and their fusion, as `fusion.predict`
runs them; its predicted label is its summary's (the mean over its segments, weighted by seconds times
summary_weight). The scores are UA (macro recall), WA (accuracy), macro and weighted F1, per-class recall, the
confusion matrix and the expected calibration error of the summaries' probabilities. A file that cannot be
predicted is listed with its error and counted as a miss (its predicted label: none), so one bad file never hides
the others nor flatters the figures.

    fusion evaluate ravdess=$FUSION_SHARED/data/ravdess-speech-16k --experts voice --experts voice,text
    fusion evaluate my_interviews.csv --confusion confusion.png     # a csv of path, label[, speaker]
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from fusion.errors import FusionError
from fusion.experts.bundle import FOLDERS, ExpertBundle
from fusion.experts.voice import by_group
from fusion.labels import EMOTIONS
from fusion.serving.prediction import SUMMARY_WEIGHT, Prediction, Summary, weighted_summary
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
    seconds: float = 0.0  # of the whole run (all subsets: each file is predicted once)
    by_speaker: bool = False  # each speaker's recordings read together (Predictor.predict_together)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        s = self.scores
        together = ", each speaker's recordings together" if self.by_speaker else ""
        lines = [
            f"{', '.join(self.data)}: {self.files} files through fusion.predict, experts {'+'.join(self.experts)}"
            f" (model {self.model_id}{together}), {self.seconds:.0f} s",
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


def evaluate(
    predictor: Predictor,
    data: Sequence[str],
    *,
    subsets: Sequence[Sequence[str]] | None = None,
    progress=None,
    by_speaker: bool = False,
) -> list[Evaluation]:
    """Score every example of data (see examples_of) through predictor.predict, once per subset of the predictor's
    experts (default: all of them together). Each file is predicted once: a subset's answer is the bundle's fusion
    of those experts' outputs per segment, which is what a Predictor with only those experts gives.

    by_speaker: the recordings of one speaker (the data's speaker column) go through predictor.predict_together,
    so that a voice expert with speaker normalisation reads each with its speaker's statistics over all of them, as
    it reads the segments of one long interview; recordings without a speaker are predicted alone."""
    started = time.perf_counter()
    subsets = [tuple(subset) for subset in subsets] if subsets else [predictor.experts]
    examples = [e for spec in data for e in examples_of(spec)]
    speakers = [e.speaker for e in examples] if by_speaker else None
    predictions = predict_files(predictor, [e.path for e in examples], speakers=speakers, progress=progress)
    rows_of = {subset: [] for subset in subsets}
    errors = []
    for example, prediction in zip(examples, predictions):
        if isinstance(prediction, FusionError):  # this file's (unreadable, no modality, ...): a miss, reported
            errors.append((example.path, str(prediction)))
            prediction = None
        for subset in subsets:
            summary = None if prediction is None else subset_summary(prediction, predictor.bundle, subset)
            p = [summary.probabilities[e] for e in EMOTIONS] if summary is not None and summary.label else None
            guess = summary.label if p is not None else NONE
            rows_of[subset].append(
                {"path": example.path, "label": example.label, "predicted": guess, "probabilities": p}
            )
    seconds = time.perf_counter() - started
    return [
        _evaluation(data, subset, predictor.model_id, rows_of[subset], errors, seconds, by_speaker)
        for subset in subsets
    ]


def predict_files(
    predictor: Predictor, paths: Sequence[str], *, speakers: Sequence[str] | None = None, progress=None
) -> list[Prediction | FusionError]:
    """Each file through predictor.predict, or, given speakers (one per path; empty: unknown), each speaker's files
    through predictor.predict_together; one Prediction or the file's FusionError per path, in order."""
    speakers = [""] * len(paths) if speakers is None else speakers
    groups = list(by_group([s or f"#{i}" for i, s in enumerate(speakers)]).values())
    out: list[Prediction | FusionError | None] = [None] * len(paths)
    for rows in progress(groups) if progress else groups:
        if len(rows) == 1:  # streamed in bounded memory, however long the file
            try:
                out[rows[0]] = predictor.predict(paths[rows[0]])
            except FusionError as error:
                out[rows[0]] = error
        else:
            for row, outcome in zip(rows, predictor.predict_together([paths[i] for i in rows])):
                out[row] = outcome
    return out


def subset_summary(prediction: Prediction, bundle: ExpertBundle, experts: Sequence[str]) -> Summary:
    """The summary the prediction would have with only these experts: their outputs per segment fused again."""
    modalities = [m for m, name in FOLDERS.items() if name in experts]
    experts = {m: prediction.experts[m] for m in modalities}
    fused = bundle.fuse(experts)
    timeline = prediction.timeline[["start", "end"]].assign(**{e: fused[:, i] for i, e in enumerate(prediction.labels)})
    return weighted_summary(timeline.assign(**{SUMMARY_WEIGHT: bundle.summary_weights(experts)}), prediction.labels)


def _evaluation(data, subset, model_id, rows, errors, seconds, by_speaker) -> Evaluation:
    labels = [r["label"] for r in rows]
    predicted = [r["predicted"] for r in rows]
    known = [r for r in rows if r["probabilities"] is not None]
    ece = float("nan")
    if known:
        probabilities = np.array([r["probabilities"] for r in known])
        ece = expected_calibration_error(probabilities, np.array([EMOTIONS.index(r["label"]) for r in known]))
    scores = score(labels, predicted, (*EMOTIONS, NONE) if NONE in predicted else EMOTIONS)
    return Evaluation(
        list(data), list(subset), model_id, len(rows), scores.as_dict(), ece, errors, rows, seconds, by_speaker
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
