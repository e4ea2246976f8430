"""The voice on corpora it never heard: leave one corpus out over four, beside the baselines trained the same way.

    python benchmarks/cross_corpus.py --shared ../shared --cache ../cache/speech \
        --out benchmarks/results/cross_corpus/recipe

Corpora: RAVDESS (English, North American actors, studio), nEMO (Polish actors), EMOVO (Italian actors) and
emospeech-in (Indian English keywords on users' own phones). For each corpus, every model is trained on the other
three (each corpus an equal share of every epoch, its classes balanced: the recipe's sampler) and tested on all of
the held-out corpus's files. A corpus is scored on its own classes in the canonical set, calm counted as neutral:
RAVDESS 7, nEMO 6 (no disgust), EMOVO 7, emospeech-in 4 (calm, anger, fear, happiness); the decision is the most
probable of those classes. UA = macro recall over them, WA = accuracy. The table's last row is the mean over the four
held-out corpora, the figure the issue targets.

In the same run, on the same splits: MFCC statistics + SVM and the logistic-regression probe on pooled Whisper
states (benchmarks/voice_baselines.py), trained on the same three corpora with canonical labels.

Levers (each a flag, so that every row of the lever table is one command):
--normalise speaker|recording: standardise the log-mel and the Whisper states per dimension with the statistics of
    all the frames of the speaker (or of the one recording), in training and test alike (no labels are used);
--parts whisper: the voice expert without the spectrogram CNN;
--expert-normalisation: the expert standardises its inputs with each speaker's statistics, shrunk towards the
    training population's (VoiceConfig.speaker_normalisation); a held-out corpus's speakers are its own; scored
    twice: each test speaker's recordings standardised together (a long interview), and each recording alone (a
    short clip, as fusion.predict serves one); --recordings-alone also trains on the second view;
--states-encoder base: Whisper base's encoder states (multilingual, 512 wide) instead of tiny.en's;
--degraded-copies K: the expert also trains on K room-and-phone copies of every training recording
    (fusion.training.rooms: reverberation, telephone band, low-rate Opus, noise, speed), Whisper states computed from
    each copy's waveform.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine  # noqa: E402
from benchmarks.voice_baselines import PROBE_C, PROBE_MAX_ITER, mfcc_statistics  # noqa: E402
from fusion.experts.voice import SpeechFeatures, VoiceConfig, predict_proba, to_canonical, voice_label  # noqa: E402
from fusion.labels import EMOTIONS  # noqa: E402
from fusion.training.datasets import Example, labels_tsv, ravdess  # noqa: E402
from fusion.training.metrics import score  # noqa: E402
from fusion.training.voice import SpeechCache, VoiceTrainConfig, fit  # noqa: E402

CORPORA = {  # name -> folder under the shared data
    "ravdess": "data/ravdess-speech-16k",
    "nemo": "data/nemo-pl",
    "emovo": "data/emovo-it",
    "emospeech-in": "data/emospeech-in",
}
PROBE_BLOCK = 3  # as benchmarks/ravdess_folds.py: the block whose pooled states did best on RAVDESS
METRICS = ("ua", "wa", "macro_f1", "weighted_f1")
MEAN_ROW = "mean over the held-out corpora"


def load_corpora(shared: Path, names: Sequence[str]) -> dict[str, list[Example]]:
    corpora = {}
    for name in names:
        folder = shared / CORPORA[name]
        corpora[name] = (ravdess(folder) if name == "ravdess" else labels_tsv(folder, name)).examples
    return corpora


def corpus_classes(examples: Sequence[Example]) -> tuple[str, ...]:
    """The canonical classes a corpus has (calm is neutral), in EMOTIONS order."""
    return tuple(c for c in EMOTIONS if c in {e.label for e in examples})


def leave_one_out(corpora: dict[str, list], held_out: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(training rows, test rows) as (corpus, index) pairs: every file of the other corpora, and every file of the
    held-out one. No file of the held-out corpus is ever in training."""
    train = [(name, i) for name in corpora if name != held_out for i in range(len(corpora[name]))]
    test = [(held_out, i) for i in range(len(corpora[held_out]))]
    return train, test


def normalised(features: Sequence[SpeechFeatures], groups: Sequence[str]) -> list[SpeechFeatures]:
    """Log-mel and Whisper states standardised per dimension over all the frames of each group (a speaker, or one
    recording when every group is its own): no labels are used, so a user's recording can be treated the same."""
    out: list[SpeechFeatures | None] = [None] * len(features)
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    for rows in by_group.values():
        mel = np.concatenate([features[i].mel for i in rows])
        states = np.concatenate([features[i].states.astype(np.float32) for i in rows], axis=1)  # (K, frames, D)
        mel_mean, mel_std = mel.mean(0), mel.std(0) + 1e-3
        mean, std = states.mean(1, keepdims=True), states.std(1, keepdims=True) + 1e-3
        for i in rows:
            out[i] = SpeechFeatures(
                ((features[i].mel - mel_mean) / mel_std).astype(np.float32),
                ((features[i].states.astype(np.float32) - mean) / std).astype(np.float16),
            )
    return out


def pooled(features: Sequence[SpeechFeatures]) -> np.ndarray:
    states = [f.states[PROBE_BLOCK - 1].astype(np.float32) for f in features]
    return np.stack([np.concatenate([s.mean(0), s.std(0)]) for s in states])


def restricted_decision(scores: np.ndarray, columns: Sequence[str], classes: Sequence[str]) -> list[str]:
    """The most probable (highest-scoring) of classes, from scores whose columns are named by columns."""
    picked = scores[:, [list(columns).index(c) for c in classes]]
    return [classes[k] for k in picked.argmax(1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.environ.get("FUSION_SHARED", "../shared"), help="shared data folder")
    parser.add_argument("--cache", required=True, help="speech feature cache folder (filled on first use)")
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--held-out", nargs="+", choices=tuple(CORPORA), default=list(CORPORA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--members", type=int, default=3, help="ensemble members (the shipped recipe: 3)")
    parser.add_argument("--parts", choices=("both", "cnn", "whisper"), default="both")
    parser.add_argument("--normalise", choices=("none", "speaker", "recording"), default="none")
    parser.add_argument(
        "--expert-normalisation",
        action="store_true",
        help="the expert standardises its inputs with each speaker's statistics (VoiceConfig.speaker_normalisation;"
        " test speakers are the held-out corpus's)",
    )
    parser.add_argument(
        "--states-encoder",
        help="the Whisper model whose encoder states the voice (and the probe) reads: base (the [base] extra), or"
        " default $FUSION_WHISPER_MODEL (tiny.en)",
    )
    parser.add_argument(
        "--degraded-copies",
        type=int,
        default=0,
        help="train also on this many room-and-phone copies of every training recording (fusion.training.rooms)",
    )
    parser.add_argument(
        "--recordings-alone",
        action="store_true",
        help="with --expert-normalisation: train also on each recording standardised alone"
        " (VoiceTrainConfig.recordings_alone)",
    )
    parser.add_argument(
        "--own-statistics-seconds",
        type=float,
        default=0.0,
        help="with --expert-normalisation: a speaker with less speech than this is standardised with the prior alone"
        " (VoiceConfig.own_statistics_seconds; benchmarks/short_recordings.py's variant uses 30)",
    )
    parser.add_argument("--examples-per-epoch", type=int, default=2160, help="the shipped recipe's 2160")
    parser.add_argument("--epochs", type=int, default=15, help="the shipped recipe's 15")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU (the shipped recipe's)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-expert", action="store_true", help="the baselines alone")
    args = parser.parse_args()
    command = shlex.join(["python", *sys.argv])
    started = time.perf_counter()

    corpora = load_corpora(Path(args.shared), list(CORPORA))
    cache = SpeechCache(args.cache, whisper_model=args.states_encoder)
    features = {}
    for name, examples in corpora.items():
        features[name], report = cache.build([e.path for e in examples], progress=False)
        if report.skipped:
            raise SystemExit(f"{name}: no features for {len(report.skipped)} files: {report.skipped[:3]}")
        if args.normalise != "none":
            groups = [e.speaker if args.normalise == "speaker" else e.path for e in examples]
            features[name] = normalised(features[name], groups)
    copies = {name: [] for name in corpora}  # degraded copies, for training only: tests read the recordings
    for k in range(1, args.degraded_copies + 1):
        for name, examples in corpora.items():
            copy, report = cache.build([e.path for e in examples], progress=False, copy=k)
            if report.skipped:
                raise SystemExit(f"{name}, copy {k}: no features for {len(report.skipped)} files")
            copies[name].append(copy)
    print(f"features of {sum(map(len, corpora.values()))} files: {time.perf_counter() - started:.0f} s", flush=True)

    runs: list[dict] = []
    if not args.no_baselines:
        runs += _baselines(args, corpora, features)
    for seed in [] if args.no_expert else args.seeds:
        for held_out in args.held_out:
            train, test = leave_one_out(corpora, held_out)
            examples = [corpora[c][i] for c, i in train]
            result = fit(
                [features[c][i] for c, i in train],
                [voice_label(e.dataset, e.label, e.native_label) for e in examples],
                groups=[e.dataset for e in examples],
                speakers=[e.speaker for e in examples],
                copies=[[copies[c][k][i] for c, i in train] for k in range(args.degraded_copies)],
                model_config=VoiceConfig(
                    use_cnn=args.parts != "whisper",
                    use_whisper=args.parts != "cnn",
                    members=args.members,
                    speaker_normalisation=args.expert_normalisation,
                    own_statistics_seconds=args.own_statistics_seconds,
                    whisper_dim=features[held_out][0].states.shape[-1],
                ),
                train_config=VoiceTrainConfig(
                    epochs=args.epochs,
                    examples_per_epoch=args.examples_per_epoch,
                    bf16=args.bf16,
                    seed=seed,
                    recordings_alone=args.recordings_alone,
                ),
            )
            # with speaker normalisation: each test speaker's recordings standardised together (a user's long
            # interview), and each recording alone (a short clip, as fusion.predict serves one)
            views = {"": [corpora[c][i].speaker for c, i in test]}
            if args.expert_normalisation:
                views[", each test recording alone"] = None
            true = [corpora[c][i].label for c, i in test]
            classes = corpus_classes(corpora[held_out])
            for view, speakers in views.items():
                probabilities = to_canonical(
                    predict_proba(result.model, [features[c][i] for c, i in test], bf16=args.bf16, speakers=speakers)
                )
                scores = score(true, restricted_decision(probabilities, EMOTIONS, classes), classes)
                runs.append(
                    {
                        "system": f"voice recipe ({args.parts}, {args.members} members"
                        + (", speaker normalisation" if args.expert_normalisation else "")
                        + (", trained also on each recording alone" if args.recordings_alone else "")
                        + (
                            f", the prior alone under {args.own_statistics_seconds:g} s"
                            if args.own_statistics_seconds
                            else ""
                        )
                        + (f", inputs normalised per {args.normalise}" if args.normalise != "none" else "")
                        + (f", {args.degraded_copies} room-and-phone copies" if args.degraded_copies else "")
                        + (f", {args.states_encoder} states" if args.states_encoder else "")
                        + view
                        + ")",
                        "held_out": held_out,
                        "seed": seed,
                        "train_seconds": result.seconds,
                        "scores": scores.as_dict(),
                    }
                )
                print(f"{held_out} seed {seed}{view}: UA {scores.ua:.3f} ({result.seconds:.0f} s training)", flush=True)
            _write(args, runs, time.perf_counter() - started, command)
    _write(args, runs, time.perf_counter() - started, command)
    print((Path(args.out) / "results.md").read_text())


def _baselines(args, corpora, features) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from fusion.media.decoding import decode

    mfcc = {name: np.stack([mfcc_statistics(decode(e.path).audio) for e in ex]) for name, ex in corpora.items()}
    probe_inputs = {name: pooled(f) for name, f in features.items()}
    runs = []
    for held_out in args.held_out:
        train, test = leave_one_out(corpora, held_out)
        true_train = [corpora[c][i].label for c, i in train]
        true_test = [corpora[c][i].label for c, i in test]
        classes = corpus_classes(corpora[held_out])
        for system, inputs, model in (
            ("MFCC statistics + SVM", mfcc, make_pipeline(StandardScaler(), SVC())),
            (
                f"pooled Whisper block-{PROBE_BLOCK} states + logistic regression",
                probe_inputs,
                make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER)),
            ),
        ):
            model.fit(np.stack([inputs[c][i] for c, i in train]), true_train)
            decision = model.decision_function(np.stack([inputs[c][i] for c, i in test]))
            predicted = restricted_decision(decision, model.classes_, classes)
            scores = score(true_test, predicted, classes)
            name = system if args.normalise == "none" else f"{system} (normalise {args.normalise})"
            name = name if system.startswith("MFCC") or not args.states_encoder else f"{name}, {args.states_encoder}"
            runs.append({"system": name, "held_out": held_out, "seed": None, "scores": scores.as_dict()})
            print(f"{held_out}: {name} UA {scores.ua:.3f}", flush=True)
    return runs


def _write(args, runs: list[dict], elapsed: float, command: str) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    systems = list(dict.fromkeys(r["system"] for r in runs))
    held = [name for name in CORPORA if any(r["held_out"] == name for r in runs)]

    def cell(system: str, corpus: str, metric: str = "ua") -> str:
        values = [r["scores"][metric] for r in runs if r["system"] == system and r["held_out"] == corpus]
        if not values:
            return "not run"
        spread = f" ± {statistics.stdev(values) * 100:.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values) * 100:.1f}{spread}"

    def mean_over_corpora(system: str, metric: str = "ua") -> float | None:
        means = []
        for corpus in held:
            values = [r["scores"][metric] for r in runs if r["system"] == system and r["held_out"] == corpus]
            if not values:
                return None
            means.append(statistics.mean(values))
        return statistics.mean(means)

    summary = {system: {m: mean_over_corpora(system, m) for m in METRICS} for system in systems}
    seconds = [r["train_seconds"] for r in runs if "train_seconds" in r]
    machine = describe_machine()
    (out / "results.json").write_text(
        json.dumps(
            {"command": command, "machine": machine, "seconds": elapsed, "summary": summary, "runs": runs}, indent=2
        )
        + "\n"
    )
    seeds = sorted({r["seed"] for r in runs if r["seed"] is not None})
    lines = [
        "# The voice on a corpus it never heard (leave one corpus out)",
        "",
        f"Command: `{command}`",
        f"Machine: {machine}; {elapsed / 60:.1f} min in all"
        + (f"; training {statistics.mean(seconds) / 60:.1f} min per model (mean)." if seconds else "."),
        f"Each model trained on the other three corpora, tested on every file of the held-out one, on its own classes"
        f" (calm counted as neutral). UA = macro recall (%); seeds {seeds} (mean ± std over seeds; the baselines"
        " are deterministic).",
        "",
        "| system | " + " | ".join(held) + f" | {MEAN_ROW} |",
        "|---|" + "---|" * (len(held) + 1),
    ]
    for system in systems:
        mean = summary[system]["ua"]
        lines.append(
            f"| {system} | "
            + " | ".join(cell(system, c) for c in held)
            + f" | {'not run' if mean is None else f'{mean * 100:.1f}'} |"
        )
    lines += ["", "WA (accuracy, %):", "", "| system | " + " | ".join(held) + " |", "|---|" + "---|" * len(held)]
    for system in systems:
        lines.append(f"| {system} | " + " | ".join(cell(system, c, "wa") for c in held) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
