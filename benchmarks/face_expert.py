"""FER2013 PublicTest scores of a trained face expert beside pixels + LR and HOG + LR on the same split, and its
per-frame accuracy on the real audio-visual clips.

    python -m benchmarks.face_expert --checkpoint /work/cache/face/run1 --log /work/cache/logs/face_run1.log \
        --out benchmarks/results/face_expert

The expert was trained by ``fusion train-expert face`` on FER2013 Training minus a stratified 10% (fixed by the
seed in its config); the baselines fit on the same 90%, their C chosen on the same 10%. PublicTest is only scored.
Clips: every sampled frame with a face of each clip in ``--clips`` is cropped by the project's own face path
(YuNet + encoders.face_detection, as ``fusion predict`` does) and labelled with the clip's emotion.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.child import describe_machine, write_results
from fusion.experts import face as expert
from fusion.labels import EMOTIONS, RAVDESS_CODES, canonical, ravdess_fields
from fusion.storage import CONFIG_FILE, STORED_DTYPES, WEIGHTS_FILE
from fusion.training.datasets import image_folder
from fusion.training.face import stratified_split
from fusion.training.metrics import score

# the published training command of the face expert this benchmark reports (README, model card)
TRAIN_COMMAND = "fusion train-expert face --data fer2013=../shared/data/fer2013/train --out runs/face"
BASELINE_C = (0.01, 0.1, 1.0)  # logistic-regression inverse regularisation strengths, chosen on validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="folder written by fusion train-expert face")
    parser.add_argument("--train", default="../shared/data/fer2013/train")
    parser.add_argument("--test", default="../shared/data/fer2013/validation", help="FER2013 PublicTest")
    parser.add_argument("--clips", default="../shared/data/av-clips", help="folder of RAVDESS-named video clips")
    parser.add_argument("--log", help="the training run's log, for its wall time (/usr/bin/time -v output)")
    parser.add_argument("--views", nargs="+", choices=expert.VIEWS, default=list(expert.VIEWS), help="views to score")
    parser.add_argument("--skip-baselines", action="store_true", help="score only the expert")
    parser.add_argument("--skip-clips", action="store_true", help="do not score the video clips")
    parser.add_argument(
        "--ship", help="also write the checkpoint with --ship-dtype weights to this folder (package data) and score it"
    )
    parser.add_argument(
        "--ship-dtype", choices=sorted(STORED_DTYPES), default="float16", help="weights of the --ship copy"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/face_expert")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model = expert.FaceExpert.load(args.checkpoint)
    saved = json.loads((Path(args.checkpoint) / CONFIG_FILE).read_text())
    training = saved["training"]
    train, test = image_folder(args.train).examples, image_folder(args.test).examples
    train_images, test_images = expert.read_faces([e.path for e in train]), expert.read_faces([e.path for e in test])
    train_labels, test_labels = [e.label for e in train], [e.label for e in test]
    fit_rows, held_rows = stratified_split(
        train_labels, fraction=training["validation_fraction"], seed=training["config"]["seed"]
    )
    report = {
        "command": " ".join(["python -m benchmarks.face_expert", *sys.argv[1:]]),
        "machine": describe_machine(),
        "checkpoint": args.checkpoint,
        "n_test": len(test),
        "training": {
            "arguments": training.get("arguments"),
            "minutes": training["seconds"] / 60,
            "wall_minutes": _wall_minutes(args.log),
            "epochs": len(training["history"]),
            "history": training["history"],
            "config": training["config"],
        },
    }
    # The views are chosen on the validation share of Training (which trained nothing); PublicTest only reports.
    held_images, held_labels = train_images[held_rows], [train_labels[i] for i in held_rows]
    report["views"] = {}
    for views in args.views:
        report["views"][views] = {
            "validation": _scores(held_labels, expert.predict_proba(model, held_images, views=views)),
            "test": _scores(test_labels, expert.predict_proba(model, test_images, views=views)),
        }
    chosen = report["chosen_views"] = max(args.views, key=lambda v: report["views"][v]["validation"]["wa"])
    if not args.skip_baselines:
        report["baselines"] = baselines(train_images, train_labels, fit_rows, held_rows, test_images, test_labels)
    if not args.skip_clips:
        report["clips"] = clips(model, Path(args.clips), views=chosen)
    if args.ship:
        dtype = STORED_DTYPES[args.ship_dtype]
        model.save(args.ship, extra={"training": training, "views": chosen}, dtype=dtype)
        shipped = expert.FaceExpert.load(args.ship)
        report["shipped"] = {
            "folder": args.ship,
            "dtype": args.ship_dtype,
            "bytes": (Path(args.ship) / WEIGHTS_FILE).stat().st_size,
            "test": _scores(test_labels, expert.predict_proba(shipped, test_images, views=chosen)),
        }
    report["wall_seconds"] = time.perf_counter() - started
    write_results(report, Path(args.out), markdown)


def _scores(labels, probabilities: np.ndarray) -> dict:
    return score(labels, [EMOTIONS[i] for i in probabilities.argmax(1)], EMOTIONS).as_dict()


def _wall_minutes(log: str | None) -> float | None:
    if not log:
        return None
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", Path(log).read_text())
    if match is None:
        return None
    seconds = 0.0
    for part in match.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds / 60


def hog_features(images: np.ndarray) -> np.ndarray:
    """(N, 48, 48) uint8 -> (N, 900) HOG: 8x8-pixel cells, 16x16 blocks moved by 8, 9 orientation bins."""
    hog = cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9)
    return np.stack([hog.compute(image).ravel() for image in images])


def baselines(train_images, train_labels, fit_rows, held_rows, test_images, test_labels) -> dict:
    """Raw pixels + LR and HOG + LR (scikit-learn, standardised inputs), fit on fit_rows, C chosen on held_rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    labels = np.array(train_labels)
    out = {}
    for name, features in (
        ("pixels_lr", lambda x: x.reshape(len(x), -1).astype(np.float32)),
        ("hog_lr", hog_features),
    ):
        started = time.perf_counter()
        x, x_test = features(train_images), features(test_images)
        scaler = StandardScaler().fit(x[fit_rows])
        x, x_test = scaler.transform(x), scaler.transform(x_test)
        best = None
        for c in BASELINE_C:
            model = LogisticRegression(C=c, max_iter=300).fit(x[fit_rows], labels[fit_rows])
            accuracy = float((model.predict(x[held_rows]) == labels[held_rows]).mean())
            if best is None or accuracy > best[0]:
                best = (accuracy, c, model)
        accuracy, c, model = best
        out[name] = {
            "C": c,
            "validation_accuracy": accuracy,
            "seconds": time.perf_counter() - started,
            "test": score(test_labels, list(model.predict(x_test)), EMOTIONS).as_dict(),
        }
        print(name, out[name]["test"]["wa"], flush=True)
    return out


def clips(model: expert.FaceExpert, folder: Path, *, views: str) -> dict:
    """Per-frame and per-clip accuracy of the expert on the main-face crops of every RAVDESS-named clip."""
    from fusion.media.features import FeatureExtractor

    paths = sorted(p for p in folder.rglob("*.mp4") if p.name.count("-") == 6)
    if not paths:
        return {}
    extractor = FeatureExtractor()
    frames_true, frames_predicted, per_clip = [], [], []
    for path in paths:
        label = canonical("ravdess", RAVDESS_CODES[ravdess_fields(path.name)["emotion"]])
        features = extractor(path)
        crops = features.face_crops[features.face_present] if features.face_crops is not None else np.empty((0,))
        if len(crops) == 0:
            per_clip.append({"clip": path.name, "label": label, "frames": 0})
            continue
        probabilities = expert.predict_proba(model, crops, views=views)
        predicted = [EMOTIONS[i] for i in probabilities.argmax(1)]
        frames_true += [label] * len(predicted)
        frames_predicted += predicted
        per_clip.append(
            {
                "clip": path.name,
                "label": label,
                "frames": len(predicted),
                "frame_accuracy": float(np.mean([p == label for p in predicted])),
                "clip_prediction": EMOTIONS[int(probabilities.mean(0).argmax())],
                "frame_predictions": {e: predicted.count(e) for e in EMOTIONS if e in predicted},
            }
        )
    extractor.close()
    return {
        "frames": score(frames_true, frames_predicted, EMOTIONS).as_dict(),
        "clip_accuracy": float(np.mean([c.get("clip_prediction") == c["label"] for c in per_clip])),
        "per_clip": per_clip,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(report: dict) -> str:
    training = report["training"]
    chosen = report["chosen_views"]
    rows = [
        (f"face expert, {views} views" + (" (chosen on validation)" if views == chosen else ""), r["test"])
        for views, r in report["views"].items()
    ]
    if "shipped" in report:
        shipped = report["shipped"]
        rows.append(
            (
                f"shipped copy, {shipped.get('dtype', 'float16')} weights ({shipped['bytes'] / 1e6:.1f} MB), "
                f"{chosen} views",
                shipped["test"],
            )
        )
    if "baselines" in report:
        rows += [
            ("raw pixels + LR", report["baselines"]["pixels_lr"]["test"]),
            ("HOG + LR", report["baselines"]["hog_lr"]["test"]),
        ]
    lines = [
        "# Face expert on FER2013 PublicTest",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Wall time of this evaluation: {report['wall_seconds'] / 60:.1f} min  ",
        f"Training: {training['epochs']} epochs, {training['minutes']:.1f} min of epochs"
        + (f", {training['wall_minutes']:.1f} min wall time for the whole command" if training["wall_minutes"] else "")
        + f" (command: `{TRAIN_COMMAND}`)",
        "",
        "PublicTest (3,589 images) is scored only. The validation share of FER2013 Training (10%, stratified, never",
        "trained on) chose the expert's test-time views (single, flip: with the mirror image, shifts: 10 views) and",
        "the baselines' C, and showed whether averaging weights over the last epochs helps (see the training",
        "history); the expert's recipe and epoch counts are fixed. WA = accuracy, UA = macro recall.",
        "",
        "Validation accuracy by views: "
        + ", ".join(f"{v} {_pct(r['validation']['wa'])}" for v, r in report["views"].items())
        + f"; chosen: {report['chosen_views']}.",
        "",
        f"| model | accuracy (WA) | UA | macro-F1 | {' | '.join(EMOTIONS)} |",
        "|---|---|---|---|" + "---|" * len(EMOTIONS),
    ]
    for name, s in rows:
        recalls = " | ".join(_pct(s["recall"].get(e, float("nan"))) for e in EMOTIONS)
        lines.append(f"| {name} | {_pct(s['wa'])} | {_pct(s['ua'])} | {_pct(s['macro_f1'])} | {recalls} |")
    lines += ["", "Validation accuracy per epoch (stratified 10% of Training, for the record):", ""]
    lines.append(
        ", ".join(f"{h['epoch']}: {_pct(h['accuracy'])}" for h in training["history"] if "accuracy" in h) or "none"
    )
    clip_report = report.get("clips") or {}
    if clip_report:
        frames = clip_report["frames"]
        lines += [
            "",
            "## Real video: per-frame accuracy on the shared RAVDESS audio-visual clips",
            "",
            f"Frames with a face: {frames['n']}; per-frame accuracy {_pct(frames['wa'])}, UA {_pct(frames['ua'])};"
            f" clip accuracy (mean probability) {_pct(clip_report['clip_accuracy'])}.",
            "",
            "| clip | label | frames | frame accuracy | clip prediction | frame predictions |",
            "|---|---|---|---|---|---|",
        ]
        for c in clip_report["per_clip"]:
            lines.append(
                f"| {c['clip']} | {c['label']} | {c['frames']} | {_pct(c.get('frame_accuracy', float('nan')))} |"
                f" {c.get('clip_prediction', '-')} | {c.get('frame_predictions', {})} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
