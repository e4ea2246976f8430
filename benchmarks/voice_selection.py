"""Choosing the voice expert's recipe on validation speakers only: the test folds are never scored here.

    python benchmarks/voice_selection.py --ravdess ../shared/data/ravdess-speech-16k --nemo ../shared/data/nemo-pl \
        --cache ../cache/speech --out benchmarks/results/voice_expert/selection.md

For each of the 6 RAVDESS folds of benchmarks/ravdess_folds.py, the fold's 15 training actors are split into 13
to train on and 2 to validate on (fusion.training.splits.speaker_split, seed 0); the fold's 3 test actors are not
used.
Each candidate recipe is trained on the 13 and scored (8-class UA) on the 2 after every epoch; the table gives the
mean over the 6 folds' validation actors (12 actors in all) at the last epoch, and at the best epoch for reference.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine  # noqa: E402
from fusion.experts.voice import VoiceConfig, voice_label  # noqa: E402
from fusion.training.datasets import nemo, ravdess  # noqa: E402
from fusion.training.splits import speaker_folds, speaker_split  # noqa: E402
from fusion.training.voice import SpeechCache, VoiceTrainConfig, fit  # noqa: E402

# name -> (model settings, training settings, extra corpus); the first is the reference the others change one thing of
CANDIDATES = {
    "Whisper block 3": (dict(use_cnn=False), dict(), None),
    "Whisper blocks 1-4 mixed": (dict(use_cnn=False, whisper_blocks=(1, 2, 3, 4)), dict(), None),
    "CNN + Whisper block 3": (dict(), dict(), None),
    "CNN + Whisper block 3, no augmentation": (dict(), dict(augment=False), None),
    "CNN + Whisper block 3, 3 members": (dict(members=3), dict(), None),
    "Whisper block 3, + nEMO": (dict(use_cnn=False), dict(), "nemo"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ravdess", required=True)
    parser.add_argument("--nemo", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="just these candidates")
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()

    examples = ravdess(args.ravdess).examples
    extra = {"nemo": nemo(args.nemo).examples}
    cache = SpeechCache(args.cache)
    features, _ = cache.build([e.path for e in examples], progress=False)
    extra_features = {"nemo": cache.build([e.path for e in extra["nemo"]], progress=False)[0]}
    started = time.perf_counter()
    rows = []
    for name in args.only or CANDIDATES:
        model_settings, train_settings, corpus = CANDIDATES[name]
        last, best, seconds = [], [], []
        for train_rows, _test_rows in speaker_folds(examples, args.folds):
            train = [examples[i] for i in train_rows]
            fit_part, check_part = speaker_split(train, seed=0)
            fit_examples = [train[i] for i in fit_part]
            fit_features = [features[train_rows[i]] for i in fit_part]
            per_epoch = None
            if corpus is not None:  # the other corpus joins the training side; RAVDESS keeps its draws per epoch
                per_epoch = 2 * len(fit_examples)
                fit_examples, fit_features = fit_examples + extra[corpus], fit_features + extra_features[corpus]
            result = fit(
                fit_features,
                [voice_label(e.dataset, e.label, e.native_label) for e in fit_examples],
                validation=(
                    [features[train_rows[i]] for i in check_part],
                    [voice_label(train[i].dataset, train[i].label, train[i].native_label) for i in check_part],
                ),
                groups=[e.dataset for e in fit_examples],
                model_config=VoiceConfig(**model_settings),
                train_config=VoiceTrainConfig(**{"bf16": args.bf16, "examples_per_epoch": per_epoch} | train_settings),
            )
            curve = [record["ua"] for record in result.history]
            last.append(curve[-1])
            best.append(max(curve))
            seconds.append(result.seconds)
        rows.append((name, last, best, seconds))
        print(
            f"{name}: last-epoch validation UA {statistics.mean(last):.3f}, best {statistics.mean(best):.3f}",
            flush=True,
        )
        _write(args.out, rows, time.perf_counter() - started)  # after each candidate: a cut run keeps what it did


def _write(out: str, rows: list, elapsed: float) -> None:
    lines = [
        "# Voice expert recipe, chosen on validation speakers (RAVDESS, 8 classes)",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        f"Machine: {describe_machine()}; {elapsed / 60:.1f} min in all.",
        "",
        "Validation UA (macro recall, %) on 2 held-out training actors per fold, mean ± std over the 6 folds; the test",
        "actors of each fold are not used.",
        "",
        "| candidate | last epoch | best epoch | training s per model |",
        "|---|---|---|---|",
    ]
    for name, last, best, seconds in rows:
        lines.append(
            f"| {name} | {statistics.mean(last) * 100:.1f} ± {statistics.stdev(last) * 100:.1f} |"
            f" {statistics.mean(best) * 100:.1f} | {statistics.mean(seconds):.0f} |"
        )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
