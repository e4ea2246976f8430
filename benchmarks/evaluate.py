"""Score a cross-attention checkpoint (`fusion train`) on labelled corpora: UA, WA, macro-F1, weighted F1 and recall
per class. The default model, an experts bundle, is scored by benchmarks/default_model.py.

    python benchmarks/evaluate.py --checkpoint runs/model --cache ~/.cache/fusion/media/features \
        --data fer2013=../shared/data/fer2013/validation --data meld=../shared/data/meld-text/dev_sent_emo.csv \
        --clips ../shared/data/av-clips --out runs/evaluation.json

--data corpora are scored from cached features (whole examples). --clips folders are predicted through the
public path, `fusion.Predictor.predict` (decode, Whisper, BERT, faces, timeline), one row per clip.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from fusion.labels import EMOTIONS, ravdess_label
from fusion.serving.predictor import Predictor
from fusion.training.cache import FeatureCache
from fusion.training.datasets import from_spec
from fusion.training.metrics import score
from fusion.training.train import predict_proba

MEDIA_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".flv", ".wav", ".flac")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--cache", required=True, help="feature cache folder")
    parser.add_argument("--data", action="append", default=[], help="KIND=PATH, scored from cached features")
    parser.add_argument("--clips", action="append", default=[], help="folder of RAVDESS-named clips to predict")
    parser.add_argument("--out", help="write every score and prediction here (JSON)")
    args = parser.parse_args()

    predictor = Predictor(args.checkpoint)
    if predictor.bundle is not None:
        raise SystemExit(f"{args.checkpoint} is an experts bundle: score it with python -m benchmarks.default_model")
    model = predictor.model
    report = {
        "checkpoint": args.checkpoint,
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {predictor.device}",
        "corpora": {},
        "clips": [],
    }
    cache = FeatureCache(args.cache)
    for spec in args.data:
        examples = from_spec(spec).examples
        features, cache_report = cache.build(examples)
        kept = [(e, f) for e, f in zip(examples, features) if f is not None]
        probabilities = predict_proba(model, [f for _, f in kept], device=predictor.device)
        predicted = [model.config.labels[i] for i in probabilities.argmax(1)]
        scores = score([e.label for e, _ in kept], predicted, model.config.labels)
        report["corpora"][spec] = scores.as_dict() | {"skipped": cache_report.skipped}
        print(
            f"{spec}: n={scores.n} UA={scores.ua:.4f} WA={scores.wa:.4f} macro-F1={scores.macro_f1:.4f} "
            f"weighted-F1={scores.weighted_f1:.4f}"
        )

    for folder in args.clips:
        for path in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES):
            result = predictor.predict(path)
            summary = result.summary
            row = {
                "file": str(path),
                "true": ravdess_label(path.name),
                "predicted": summary["label"],
                "p_true": summary["probabilities"][ravdess_label(path.name)],
                "modalities": summary["modalities"],
                "probabilities": summary["probabilities"],
            }
            report["clips"].append(row)
            print(
                f"{path.name}: true {row['true']:<9} predicted {row['predicted']:<9} "
                f"p(true)={row['p_true']:.2f} from {'+'.join(row['modalities'])}"
            )
    if report["clips"]:
        clip_scores = score([r["true"] for r in report["clips"]], [r["predicted"] for r in report["clips"]], EMOTIONS)
        report["clip_scores"] = clip_scores.as_dict()
        print(f"clips: {clip_scores.n} predicted, WA={clip_scores.wa:.3f} UA={clip_scores.ua:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
