"""The default model (an experts bundle, fusion.experts.bundle), scored on every corpus beside the 30-line
baselines, in one run. The bundle itself is built by `fusion bundle` (its recipe: `fusion bundle --recipe
fusion/checkpoints/default --work runs/default --out runs/model`, docs/training.md); this script only scores it.

    python -m benchmarks.default_model --checkpoint fusion/checkpoints/default --out benchmarks/results/default_model

Scoring: FER2013 PublicTest through the bundle's face path and MELD dev through its text path (the code
fusion.predict runs per segment), each beside its baselines fitted on the same training data with C chosen on the
same validation data; expected calibration error before and after the temperatures. The real clips go through
fusion.Predictor.predict, and per subset of modalities (the experts present pooled), the clip-level accuracy: what
text and video add to the voice. RAVDESS: the shipped voice expert heard every RAVDESS speaker, so its
speaker-independent figure is its recipe's on held-out speakers (benchmarks/results/voice_expert/ravdess_four_corpora).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from alignment import make_segments
from benchmarks.child import describe_machine, write_results
from benchmarks.face_expert import baselines as face_baselines
from benchmarks.meld_text_expert import logistic_regression
from fusion.experts import face as face_expert
from fusion.experts.bundle import BUNDLE_FILE, ExpertBundle
from fusion.labels import EMOTIONS, MODALITIES, RAVDESS_CODES, canonical, label_indices, ravdess_fields
from fusion.training.ablation import RecordingOutputs, recording_probabilities
from fusion.training.datasets import image_folder, meld
from fusion.training.face import stratified_split
from fusion.training.metrics import expected_calibration_error, score
from fusion.training.text import items_from_examples, split_by_dialogue

VOICE_RECIPE = Path("benchmarks/results/voice_expert/ravdess_four_corpora/results.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", default="fusion/checkpoints/default", help="the bundle to score (written by `fusion bundle`)"
    )
    parser.add_argument("--fer-train", default="../shared/data/fer2013/train")
    parser.add_argument("--fer-test", default="../shared/data/fer2013/validation", help="FER2013 PublicTest")
    parser.add_argument("--meld-train", default="../shared/data/meld-text/train_sent_emo.csv")
    parser.add_argument("--meld-dev", default="../shared/data/meld-text/dev_sent_emo.csv")
    parser.add_argument("--clips", default="../shared/data/av-clips")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/default_model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report = {"command": " ".join(["python -m benchmarks.default_model", *sys.argv[1:]]), "machine": describe_machine()}

    fer_train, fer_test = image_folder(args.fer_train).examples, image_folder(args.fer_test).examples
    meld_train, meld_dev = meld(args.meld_train).examples, meld(args.meld_dev).examples
    folder = Path(args.checkpoint)
    bundle = ExpertBundle.load(folder)
    report["bundle"] = {
        "folder": str(folder),
        "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "config": json.loads((folder / BUNDLE_FILE).read_text()),
    }
    report["fer2013"] = score_faces(bundle, fer_train, fer_test)
    report["meld"] = score_text(bundle, meld_train, meld_dev)
    report["clips"] = score_clips(folder, Path(args.clips))
    if VOICE_RECIPE.is_file():
        recipe = json.loads(VOICE_RECIPE.read_text())
        report["ravdess_recipe"] = {"command": recipe["command"], "summary": recipe["summary"]}
    report["wall_seconds"] = time.perf_counter() - started
    write_results(report, Path(args.out), markdown)


# -------------------------------------------------------------------------------------------------------- scoring


def _scores(labels, probabilities: np.ndarray) -> dict:
    return score(list(labels), [EMOTIONS[i] for i in probabilities.argmax(1)], EMOTIONS).as_dict() | {
        "ece": expected_calibration_error(probabilities, label_indices(labels))
    }


def score_faces(bundle: ExpertBundle, train, test) -> dict:
    """PublicTest through the bundle's face path, beside pixels + LR and HOG + LR."""
    labels = [e.label for e in test]
    images = face_expert.read_faces([e.path for e in test])
    raw = bundle.face_probabilities(images)
    out = {
        "n": len(test),
        "expert": _scores(labels, raw),
        "default_model": _scores(labels, bundle.fuse({"video": raw})),
    }
    train_labels = [e.label for e in train]
    fit_rows, held_rows = stratified_split(train_labels, fraction=0.1, seed=0)
    train_images = face_expert.read_faces([e.path for e in train])
    out["baselines"] = face_baselines(train_images, train_labels, fit_rows, held_rows, images, labels)
    return out


def score_text(bundle: ExpertBundle, train, dev) -> dict:
    """MELD dev through the bundle's text path, beside TF-IDF + LR fitted on the same part of MELD train."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    labels = [e.label for e in dev]
    raw = bundle.text.predict_proba([e.text.strip() for e in dev])
    out = {"n": len(dev), "expert": _scores(labels, raw), "default_model": _scores(labels, bundle.fuse({"text": raw}))}
    config = (bundle.text.members[0] if hasattr(bundle.text, "members") else bundle.text).config
    items = items_from_examples(train, context=False)
    keep, held = split_by_dialogue(items, config.validation_fraction, config.seed)
    y = np.array([e.label for e in train])
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([train[i].text for i in keep])
    words, dev_words = tfidf.transform([e.text for e in train]), tfidf.transform([e.text for e in dev])
    out["baselines"] = {"tfidf_lr": logistic_regression(words[keep], y[keep], words[held], y[held], dev_words, dev)}
    return out


def score_clips(folder: Path, clips: Path) -> dict:
    """Every RAVDESS-named clip through fusion.Predictor.predict, and the clip label of each subset of the experts
    (segment probabilities pooled over the subset, then averaged over the clip weighted by segment duration)."""
    from fusion.serving.predictor import Predictor

    paths = sorted(p for p in clips.rglob("*.mp4") if p.name.count("-") == 6)
    predictor = Predictor(folder)
    subsets = [s for r in range(1, 4) for s in itertools.combinations(MODALITIES, r)]
    rows, truth = [], []
    for path in paths:
        label = canonical("ravdess", RAVDESS_CODES[ravdess_fields(path.name)["emotion"]])
        truth.append(label)
        started = time.perf_counter()
        prediction = predictor.predict(path)
        seconds = time.perf_counter() - started
        features = predictor.extractor(path)
        segments = make_segments(features.utterances, features.duration)
        experts = predictor.bundle.segment_probabilities(features, segments)
        outputs = RecordingOutputs(np.array([s.end - s.start for s in segments]), experts)
        by_subset = {}
        for subset in subsets:
            clip = recording_probabilities(outputs, predictor.bundle, subset, replaced={})
            if clip is not None:
                by_subset["+".join(subset)] = EMOTIONS[int(clip.argmax())]
        rows.append(
            {
                "clip": path.relative_to(clips).as_posix(),
                "label": label,
                "predicted": prediction.summary.label,
                "modalities": prediction.summary.modalities,
                "seconds": seconds,
                "by_subset": by_subset,
            }
        )
    predictor.extractor.close()
    accuracy = {
        "+".join(s): float(np.mean([r["by_subset"].get("+".join(s)) == r["label"] for r in rows])) for s in subsets
    }
    counted = {"+".join(s): sum("+".join(s) in r["by_subset"] for r in rows) for s in subsets}
    return {
        "n": len(rows),
        "accuracy": float(np.mean([r["predicted"] == r["label"] for r in rows])),
        "by_subset": accuracy,
        "clips_with_subset": counted,
        "per_clip": rows,
    }


# --------------------------------------------------------------------------------------------------------- report


def _row(name: str, s: dict, *, metric: str) -> str:
    ece = f"{100 * s['ece']:.1f}" if "ece" in s else ""
    return (
        f"| {name} | {100 * s[metric]:.1f} | {100 * s['ua']:.1f} | {100 * s['wa']:.1f} | {100 * s['macro_f1']:.1f} | "
        f"{ece} |"
    )


def markdown(report: dict) -> str:
    bundle = report["bundle"]
    calibration = bundle["config"].get("calibration", {})
    lines = [
        "# The default model: the experts, calibrated and fused late",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Wall time: {report['wall_seconds'] / 60:.1f} min  ",
        f"Bundle: `{bundle['folder']}`, {bundle['bytes'] / 1e6:.1f} MB in all",
        "",
        "Temperatures (video and text fitted on each expert's validation data, never on the scored sets): "
        + ", ".join(f"{m} {t:.2f}" for m, t in bundle["config"]["late_fusion"]["temperatures"].items())
        + (f" (audio: {calibration['audio']['why']})" if "audio" in calibration else "")
        + ". Weights: "
        + ", ".join(f"{m} {w:g}" for m, w in bundle["config"]["late_fusion"]["weights"].items())
        + ". ECE = expected calibration error (15 equal-width confidence bins), in points.",
        "",
        "Class priors divided out when experts pool (fusion/experts/late_fusion.py; "
        + ", ".join(EMOTIONS)
        + "): "
        + "; ".join(
            f"{m} " + " ".join(f"{100 * x:.0f}" for x in p)
            for m, p in bundle["config"]["late_fusion"]["priors"].items()
        )
        + " (%).",
        "",
    ]
    for corpus, title, metric in (
        ("fer2013", "FER2013 PublicTest (face only), accuracy = WA", "wa"),
        ("meld", "MELD dev (text only), weighted F1", "weighted_f1"),
    ):
        part = report[corpus]
        lines += [
            f"## {title}: {part['n']} examples",
            "",
            f"| system | {'accuracy' if metric == 'wa' else 'weighted F1'} | UA | WA | macro-F1 | ECE |",
            "|---|---|---|---|---|---|",
            _row("default model (calibrated)", part["default_model"], metric=metric),
            _row("the expert alone (uncalibrated)", part["expert"], metric=metric),
        ]
        lines += [_row(f"baseline: {n}", s.get("test", s), metric=metric) for n, s in part["baselines"].items()]
        best = max(s.get("test", s)[metric] for s in part["baselines"].values())
        lines += ["", f"Margin over the best baseline: {100 * (part['default_model'][metric] - best):+.1f} points.", ""]
    if "ravdess_recipe" in report:
        lines += [
            "## RAVDESS (voice only), speaker-independent: the voice expert's recipe on held-out speakers",
            "",
            f"From `{VOICE_RECIPE}` (command: `{report['ravdess_recipe']['command'][:200]}...`):",
            "",
            "| system | UA (8 classes) | WA |",
            "|---|---|---|",
        ]
        for system, s in report["ravdess_recipe"]["summary"].items():
            lines.append(
                f"| {system} | {100 * s['ua']['mean']:.1f} ± {100 * s['ua']['std']:.1f} | "
                f"{100 * s['wa']['mean']:.1f} ± {100 * s['wa']['std']:.1f} |"
            )
        lines.append("")
    clips = report["clips"]
    lines += [
        f"## Real clips through fusion.predict: {clips['n']} RAVDESS audio-visual clips",
        "",
        f"Clip accuracy of fusion.predict: {100 * clips['accuracy']:.1f}%. By subset of the experts pooled "
        "(clip accuracy over all clips; a clip lacking every modality of a subset counts as wrong):",
        "",
        "| experts | clip accuracy | clips with them |",
        "|---|---|---|",
    ]
    for subset, accuracy in clips["by_subset"].items():
        lines.append(f"| {subset} | {100 * accuracy:.1f} | {clips['clips_with_subset'][subset]} |")
    lines += [
        "",
        "| clip | label | fusion.predict | audio | audio+text | audio+text+video | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in clips["per_clip"]:
        s = r["by_subset"]
        lines.append(
            f"| {r['clip']} | {r['label']} | {r['predicted']} | {s.get('audio', '')} | {s.get('audio+text', '')} | "
            f"{s.get('audio+text+video', '')} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
