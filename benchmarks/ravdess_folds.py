"""The voice expert, speaker-independent: train on some speakers, test on held-out speakers, beside the baselines.

    python benchmarks/ravdess_folds.py --ravdess ../shared/data/ravdess-speech-16k --nemo ../shared/data/nemo-pl \
        --cache ../cache/speech --test-on ravdess --folds 6 --seeds 0 1 2 --parts both \
        --train-on ravdess+nemo --out benchmarks/results/voice_expert/ravdess

Folds are over the test corpus's speakers (RAVDESS: 6 folds of 3 of actors 01-18, 8 native classes; nEMO: 3 folds
of 3 of its 9 speakers, 6 classes). Every model of a fold is trained on all the other speakers with the fixed recipe
(fusion.training.voice.VoiceTrainConfig: its epochs and settings were chosen on validation speakers drawn from
training speakers, benchmarks/voice_selection.py; no test fold chooses anything). With ``--train-on ravdess+nemo``
the other corpus's speakers all join the training side. In the same run and on the same folds: MFCC
statistics + SVM and a logistic-regression probe on pooled Whisper states (benchmarks/voice_baselines.py), trained
on the test corpus's training speakers. UA = macro recall, WA = accuracy; mean ± std over folds and seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine  # noqa: E402
from benchmarks.voice_baselines import mfcc_svm, pooled_probe  # noqa: E402
from fusion.experts.voice import VOICE_LABELS, VoiceConfig, predict_proba, to_canonical, voice_label  # noqa: E402
from fusion.labels import (  # noqa: E402
    EMOTIONS,
    RAVDESS_CODES,
    RAVDESS_NATIVE,
    canonical,
    label_indices,
    ravdess_fields,
)
from fusion.media.decoding import decode  # noqa: E402
from fusion.training.datasets import labels_tsv, nemo, ravdess  # noqa: E402
from fusion.training.metrics import score  # noqa: E402
from fusion.training.splits import speaker_folds  # noqa: E402
from fusion.training.voice import SpeechCache, VoiceTrainConfig, fit  # noqa: E402

METRICS = ("ua", "wa", "macro_f1", "weighted_f1")
PROBE_BLOCK = 3  # the block whose pooled states the probe reads: its best in benchmarks/results/whisper_blocks.md
# RAVDESS native name -> voice label (calm kept apart), and back
RAVDESS_TO_VOICE = {native: voice_label("ravdess", canonical("ravdess", native), native) for native in RAVDESS_NATIVE}
VOICE_TO_RAVDESS = {voice: native for native, voice in RAVDESS_TO_VOICE.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ravdess", required=True, help="RAVDESS speech folder")
    parser.add_argument("--nemo", help="nEMO folder (with labels.tsv)")
    parser.add_argument("--emovo", help="EMOVO folder (with labels.tsv), a training corpus in --train-on variants")
    parser.add_argument("--emospeech-in", help="emospeech-in folder (with labels.tsv), a training corpus likewise")
    parser.add_argument("--cache", required=True, help="speech feature cache folder")
    parser.add_argument("--test-on", choices=("ravdess", "nemo"), default="ravdess")
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument(
        "--only-folds", type=int, nargs="+", help="run just these folds (0-based), e.g. to try a setting"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--parts", nargs="+", choices=("both", "cnn", "whisper"), default=["both"])
    parser.add_argument(
        "--train-on",
        nargs="+",
        default=["ravdess"],
        help="each a variant: corpora joined by + (ravdess, nemo, emovo, emospeech-in), e.g. ravdess+nemo",
    )
    parser.add_argument(
        "--speaker-normalisation",
        action="store_true",
        help="the expert standardises its inputs with each speaker's statistics (VoiceConfig.speaker_normalisation)",
    )
    parser.add_argument(
        "--recordings-alone",
        action="store_true",
        help="with --speaker-normalisation: also train on each recording standardised alone "
        "(VoiceTrainConfig.recordings_alone)",
    )
    parser.add_argument(
        "--examples-per-epoch",
        type=int,
        help="examples drawn per epoch (default: the test corpus's training files times the number of corpora)",
    )
    parser.add_argument("--epochs", type=int, default=VoiceTrainConfig.epochs)
    parser.add_argument("--members", type=int, default=VoiceConfig.members, help="ensemble members per expert")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write each expert run's test probabilities (canonical classes) to --out/probabilities/, for "
        "out-of-fold voice outputs (benchmarks/attention_fusion.py)",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite results.md from --out's results.json")
    parser.add_argument(
        "--merge", nargs="+", help="with --report-only: the runs of these folders' results.json (e.g. one per seed)"
    )
    args = parser.parse_args()
    if args.report_only:
        folders = args.merge or [args.out]
        saved = [json.loads((Path(folder) / "results.json").read_text()) for folder in folders]
        classes = RAVDESS_NATIVE if args.test_on == "ravdess" else tuple(saved[0]["classes"])
        runs = [run for s in saved for run in s["runs"]]
        command = "; ".join(s["command"] for s in saved)  # the runs were made by these commands, in parallel
        _write(args, runs, max(s["seconds"] for s in saved), classes, command=command, machine=saved[0]["machine"])
        return

    corpora = {"ravdess": ravdess(args.ravdess).examples}
    if args.nemo:
        corpora["nemo"] = nemo(args.nemo).examples
    if args.emovo:
        corpora["emovo"] = labels_tsv(args.emovo, "emovo").examples
    if args.emospeech_in:
        corpora["emospeech-in"] = labels_tsv(args.emospeech_in, "emospeech-in").examples
    needed = {c for variant in args.train_on for c in variant.split("+")} | {args.test_on}
    missing = needed - set(corpora)
    if missing:
        raise SystemExit(f"--train-on/--test-on name corpora without a folder: {sorted(missing)}")
    cache = SpeechCache(args.cache)
    features = {}
    for name in sorted(needed):
        features[name], report = cache.build([e.path for e in corpora[name]], progress=False)
        if report.skipped:
            raise SystemExit(f"{name}: features missing for {len(report.skipped)} files: {report.skipped[:3]}")

    test_examples = corpora[args.test_on]
    classes = (
        RAVDESS_NATIVE
        if args.test_on == "ravdess"
        else tuple(sorted({e.label for e in test_examples}, key=EMOTIONS.index))
    )
    true_native = np.array([e.native_label if args.test_on == "ravdess" else e.label for e in test_examples])
    folds = speaker_folds(test_examples, args.folds)
    started = time.perf_counter()

    runs = []
    if not args.no_baselines:
        runs += _baselines(test_examples, features[args.test_on], true_native, folds, classes)
    for variant in args.train_on:
        for parts in args.parts:
            for seed in args.seeds:
                for fold, (train_rows, test_rows) in enumerate(folds):
                    if args.only_folds is not None and fold not in args.only_folds:
                        continue
                    for run in _expert_run(
                        args, corpora, features, variant, parts, seed, fold, train_rows, test_rows, classes
                    ):
                        runs.append(run)
                        print(
                            f"{run['system']} seed {seed} fold {fold}: UA {run['scores']['ua']:.3f}"
                            f" ({run['train_seconds']:.0f} s training; {time.perf_counter() - started:.0f} s so far)",
                            flush=True,
                        )
                    # after every run, so that a run cut short keeps what it measured
                    _write(
                        args, runs, time.perf_counter() - started, classes, command=shlex.join(["python", *sys.argv])
                    )
    _write(args, runs, time.perf_counter() - started, classes, command=shlex.join(["python", *sys.argv]))
    print((Path(args.out) / "results.md").read_text())


def read_probabilities(folder: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """What --save-probabilities wrote, by fold: (N, 7) canonical probabilities and (N,) canonical class indices of
    the RAVDESS files (from their names). One file per fold is expected (one variant, parts and seed)."""
    folds: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for path in sorted(Path(folder).glob("*.npz")):
        fold = int(re.search(r"fold(\d+)\.npz$", path.name).group(1))
        if fold in folds:
            raise SystemExit(f"{folder}: more than one file of fold {fold}")
        saved = np.load(path)
        labels = [canonical("ravdess", RAVDESS_CODES[ravdess_fields(p)["emotion"]]) for p in saved["paths"]]
        folds[fold] = (saved["probabilities"], label_indices(labels))
    if not folds:
        raise SystemExit(f"{folder}: no out-of-fold probabilities (benchmarks/ravdess_folds.py --save-probabilities)")
    return folds


def _baselines(examples, features, true_native, folds, classes) -> list[dict]:
    audio = [decode(e.path).audio for e in examples]
    pooled = np.stack(
        [
            np.concatenate(
                [
                    f.states[PROBE_BLOCK - 1].astype(np.float32).mean(0),
                    f.states[PROBE_BLOCK - 1].astype(np.float32).std(0),
                ]
            )
            for f in features
        ]
    )
    runs = []
    for fold, (train, test) in enumerate(folds):
        svm = mfcc_svm(audio, true_native, train, test, classes=classes)
        probe = pooled_probe(pooled[train], true_native[train], pooled[test], true_native[test], classes=classes)
        runs.append({"system": "MFCC statistics + SVM", "seed": None, "fold": fold, "scores": svm.as_dict()})
        runs.append(
            {
                "system": f"pooled Whisper block-{PROBE_BLOCK} states + logistic regression",
                "seed": None,
                "fold": fold,
                "scores": probe.as_dict(),
            }
        )
        print(f"fold {fold}: MFCC+SVM UA {svm.ua:.3f}, probe UA {probe.ua:.3f}", flush=True)
    return runs


def _expert_run(args, corpora, features, variant, parts, seed, fold, train_rows, test_rows, classes) -> list[dict]:
    """Train on the fold's training speakers of the test corpus (if the variant names it) and every speaker of the
    variant's other corpora, for the fixed recipe's epochs; score the fold's test speakers -> one run per view."""
    test_corpus, names = args.test_on, variant.split("+")
    train_examples, train_features = [], []
    if test_corpus in names:
        train_examples += [corpora[test_corpus][i] for i in train_rows]
        train_features += [features[test_corpus][i] for i in train_rows]
    own = len(train_examples)
    for other in names:
        if other != test_corpus:
            train_examples += corpora[other]
            train_features += features[other]
    # each corpus an equal share of every epoch; the test corpus keeps the draws per epoch it has alone
    per_epoch = args.examples_per_epoch or (len(names) * own if own and len(names) > 1 else None)
    result = fit(
        train_features,
        [voice_label(e.dataset, e.label, e.native_label) for e in train_examples],
        groups=[e.dataset for e in train_examples],
        speakers=[e.speaker for e in train_examples],
        model_config=VoiceConfig(
            use_cnn=parts != "whisper",
            use_whisper=parts != "cnn",
            members=args.members,
            speaker_normalisation=args.speaker_normalisation,
        ),
        train_config=VoiceTrainConfig(
            epochs=args.epochs,
            augment=not args.no_augment,
            bf16=args.bf16,
            seed=seed,
            examples_per_epoch=per_epoch,
            recordings_alone=args.recordings_alone,
        ),
    )
    test = [corpora[test_corpus][i] for i in test_rows]
    members = f", {args.members} members" if args.members > 1 else ""
    members += ", speaker normalisation" if args.speaker_normalisation else ""
    members += ", also each recording alone" if args.recordings_alone else ""
    # with speaker normalisation: each test speaker's recordings standardised together (a user's long interview),
    # and each recording alone (a short clip, as fusion.predict serves one)
    views = {"": [e.speaker for e in test]}
    if args.speaker_normalisation:
        views[", each test recording alone"] = None
    runs = []
    for view, speakers in views.items():
        probabilities = predict_proba(
            result.model, [features[test_corpus][i] for i in test_rows], bf16=args.bf16, speakers=speakers
        )
        if test_corpus == "ravdess":
            true = [e.native_label for e in test]
            predicted = [VOICE_TO_RAVDESS[VOICE_LABELS[k]] for k in probabilities.argmax(1)]
        else:  # only the corpus's own classes can be predicted: a 6-way decision for nEMO
            true = [e.label for e in test]
            canonical_p = to_canonical(probabilities)[:, [EMOTIONS.index(c) for c in classes]]
            predicted = [classes[k] for k in canonical_p.argmax(1)]
        if args.save_probabilities:
            folder = Path(args.out) / ("probabilities-alone" if view else "probabilities")
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(
                folder / f"{parts}-{variant}-seed{seed}-fold{fold}.npz",
                paths=np.array([e.path for e in test]),
                probabilities=to_canonical(probabilities).astype(np.float32),
            )
        runs.append(
            {
                "system": f"voice expert ({parts}{members}{view}), trained on {variant}",
                "seed": seed,
                "fold": fold,
                "test_speakers": sorted({e.speaker for e in test}),
                "train_seconds": result.seconds,
                "scores": score(true, predicted, classes).as_dict(),
            }
        )
    return runs


def _write(args, runs: list[dict], elapsed: float, classes, *, command: str, machine: str | None = None) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine or describe_machine()
    systems = list(dict.fromkeys(run["system"] for run in runs))
    summary = {
        system: {m: _mean_std([r["scores"][m] for r in runs if r["system"] == system]) for m in METRICS}
        for system in systems
    }
    for system in systems:
        seconds = [r["train_seconds"] for r in runs if r["system"] == system and "train_seconds" in r]
        if seconds:
            summary[system]["train_seconds"] = _mean_std(seconds)
    (out / "results.json").write_text(
        json.dumps(
            {
                "command": command,
                "machine": machine,
                "seconds": elapsed,
                "classes": list(classes),
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    n_classes = len(classes)
    n_folds = 1 + max(run["fold"] for run in runs)
    seeds = sorted({run["seed"] for run in runs if run["seed"] is not None})
    lines = [
        f"# Voice expert on {args.test_on}, speaker-independent folds, {n_classes} classes",
        "",
        f"Command: `{command}`",
        f"Machine: {machine}; {elapsed / 60:.1f} min in all.",
        f"{n_folds} folds over {args.test_on}'s speakers; seeds {seeds}; mean ± std over folds x seeds"
        " (baselines are deterministic: over folds). UA = macro recall, WA = accuracy.",
        "",
        "| system | UA | WA | macro-F1 | weighted F1 | training s per model |",
        "|---|---|---|---|---|---|",
    ]
    for system in systems:
        cells = " | ".join(
            f"{summary[system][m]['mean'] * 100:.1f} ± {summary[system][m]['std'] * 100:.1f}" for m in METRICS
        )
        seconds = summary[system].get("train_seconds")
        seconds_cell = "" if seconds is None else f"{seconds['mean']:.0f}"
        lines.append(f"| {system} | {cells} | {seconds_cell} |")
    if args.test_on == "ravdess":  # the same predictions with calm counted as neutral, as the canonical labels do
        lines += ["", "7 canonical classes (the same predictions, calm merged into neutral):", ""]
        lines += ["| system | UA | WA | macro-F1 | weighted F1 |", "|---|---|---|---|---|"]
        for system in systems:
            merged = [_calm_as_neutral(r["scores"]["confusion"]) for r in runs if r["system"] == system]
            cells = " | ".join(
                f"{statistics.mean(m[k] for m in merged) * 100:.1f} ± "
                f"{(statistics.stdev(m[k] for m in merged) if len(merged) > 1 else 0.0) * 100:.1f}"
                for k in METRICS
            )
            lines.append(f"| {system} | {cells} |")
    lines += ["", "UA per fold (mean over seeds):", ""]
    for system in systems:
        per_fold = [
            [r["scores"]["ua"] for r in runs if r["system"] == system and r["fold"] == f] for f in range(n_folds)
        ]
        lines.append(
            f"- {system}: " + ", ".join(f"{statistics.mean(v) * 100:.1f}" if v else "not run" for v in per_fold)
        )
    lines += [
        "",
        "Recall per class (mean over runs):",
        "",
        "| system | " + " | ".join(classes) + " |",
        "|---|" + "---|" * n_classes,
    ]
    for system in systems:
        recalls = [
            statistics.mean(r["scores"]["recall"].get(c, 0.0) for r in runs if r["system"] == system) * 100
            for c in classes
        ]
        lines.append(f"| {system} | " + " | ".join(f"{v:.1f}" for v in recalls) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _calm_as_neutral(confusion: list[list[int]]) -> dict[str, float]:
    """UA, WA, macro-F1 and weighted F1 of an 8-class RAVDESS confusion matrix (RAVDESS_NATIVE order) with calm's
    row and column added to neutral's."""
    matrix = np.array(confusion, dtype=np.float64)
    neutral, calm = RAVDESS_NATIVE.index("neutral"), RAVDESS_NATIVE.index("calm")
    matrix[neutral] += matrix[calm]
    matrix[:, neutral] += matrix[:, calm]
    matrix = np.delete(np.delete(matrix, calm, 0), calm, 1)
    support, predicted, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
    present = support > 0
    recall = hits[present] / support[present]
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)[present]
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(recall), where=precision + recall > 0)
    return {
        "ua": float(recall.mean()),
        "wa": float(hits.sum() / matrix.sum()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support[present]).sum() / support[present].sum()),
    }


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


if __name__ == "__main__":
    main()
