"""RAVDESS speech, speaker-independent: train on some actors, test on held-out actors, all 8 native classes.

    python benchmarks/ravdess_folds.py --data ../shared/data/ravdess-speech-16k --cache ~/.cache/fusion/features \
        --folds 6 --seeds 0 1 --epochs 25 --out benchmarks/results/ravdess_speech

Every fold tests actors that no model of that fold saw (validation for early stopping is drawn from the training
actors too). The 7-class canonical figure is the same predictions with calm merged into neutral. Reports UA
(macro recall), WA (accuracy), macro-F1 and weighted F1 as mean ± standard deviation over folds and seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fusion.augment import AugmentConfig
from fusion.cache import FeatureCache
from fusion.datasets import ravdess, speaker_folds, speaker_split
from fusion.labels import EMOTIONS, RAVDESS_NATIVE, canonical, ravdess_native
from fusion.metrics import score
from fusion.model import FusionConfig
from fusion.train import TrainConfig, fit, predict_proba

METRICS = ("ua", "wa", "macro_f1", "weighted_f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="RAVDESS speech folder (Actor_XX/*.flac or .wav)")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--only-folds", type=int, nargs="*", help="run just these fold numbers (0-based)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    args = parser.parse_args()

    examples = ravdess(args.data).examples
    features, report = FeatureCache(args.cache).build(examples)
    if report.skipped:
        raise SystemExit(f"features missing for {len(report.skipped)} files: {report.skipped[:3]}")
    native = [ravdess_native(Path(e.path).name) for e in examples]
    config = TrainConfig(epochs=args.epochs, augment=AugmentConfig(enabled=not args.no_augment))
    model_config = FusionConfig(labels=RAVDESS_NATIVE)

    runs = []
    started = time.perf_counter()
    for seed in args.seeds:
        for fold, (train_rows, test_rows) in enumerate(speaker_folds(examples, args.folds)):
            if args.only_folds is not None and fold not in args.only_folds:
                continue
            fit_part, check_part = speaker_split([examples[i] for i in train_rows], seed=seed)
            fit_rows, check_rows = [train_rows[j] for j in fit_part], [train_rows[j] for j in check_part]
            result = fit(
                [features[i] for i in fit_rows],
                [native[i] for i in fit_rows],
                validation=([features[i] for i in check_rows], [native[i] for i in check_rows]),
                model_config=model_config,
                train_config=dataclasses.replace(config, seed=seed),
            )
            probabilities = predict_proba(result.model, [features[i] for i in test_rows])
            predicted = [RAVDESS_NATIVE[k] for k in probabilities.argmax(1)]
            true = [native[i] for i in test_rows]
            eight = score(true, predicted, RAVDESS_NATIVE)
            seven = score(
                [canonical("ravdess", t) for t in true], [canonical("ravdess", p) for p in predicted], EMOTIONS
            )
            runs.append(
                {
                    "seed": seed,
                    "fold": fold,
                    "test_actors": sorted({examples[i].speaker for i in test_rows}),
                    "best_epoch": result.best_epoch,
                    "native_8": eight.as_dict(),
                    "canonical_7": seven.as_dict(),
                }
            )
            print(
                f"seed {seed} fold {fold}: 8-class UA {eight.ua:.3f} WA {eight.wa:.3f}; 7-class UA {seven.ua:.3f}"
                f" (best epoch {result.best_epoch}, {time.perf_counter() - started:.0f} s so far)",
                flush=True,
            )
    elapsed = time.perf_counter() - started
    _write(args, runs, elapsed)


def _write(args: argparse.Namespace, runs: list[dict], elapsed: float) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", *sys.argv])
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    summary = {
        task: {m: _mean_std([run[task][m] for run in runs]) for m in METRICS} for task in ("native_8", "canonical_7")
    }
    (out / "results.json").write_text(
        json.dumps(
            {"command": command, "machine": machine, "seconds": elapsed, "summary": summary, "runs": runs}, indent=2
        )
        + "\n"
    )
    lines = [
        "# RAVDESS speech, speaker-independent folds",
        "",
        f"Command: `{command}`",
        f"Machine: {machine}; {elapsed / 60:.1f} min. {len(runs)} runs (folds x seeds); mean ± std over runs.",
        "",
        "| classes | UA | WA | macro-F1 | weighted F1 |",
        "|---|---|---|---|---|",
    ]
    for task, name in (("native_8", "8 native"), ("canonical_7", "7 canonical (calm -> neutral)")):
        cells = " | ".join(
            f"{summary[task][m]['mean'] * 100:.1f} ± {summary[task][m]['std'] * 100:.1f}" for m in METRICS
        )
        lines.append(f"| {name} | {cells} |")
    lines += ["", "Recall per class (8 native, mean over runs):", ""]
    for label in RAVDESS_NATIVE:
        recalls = [run["native_8"]["recall"].get(label) for run in runs if label in run["native_8"]["recall"]]
        lines.append(f"- {label}: {statistics.mean(recalls) * 100:.1f}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


if __name__ == "__main__":
    main()
