"""Which Whisper encoder block carries the most emotion: a linear probe on each block's pooled states.

    python benchmarks/whisper_blocks.py --data ../shared/data/ravdess-speech-16k --folds 6 \
        --out benchmarks/results/whisper_blocks.md

For every RAVDESS speech file, the states after each of the Whisper encoder's blocks (encoders.whisper_states, on
the unpadded clip) are pooled over time (mean and standard deviation per dimension), standardised, and classified
by logistic regression into the 8 native classes, on the same speaker-independent folds as
benchmarks/ravdess_folds.py. The MFCC-statistics + SVM baseline runs on the same folds. UA = macro recall.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine  # noqa: E402
from benchmarks.voice_baselines import PROBE_C, mfcc_svm, pooled_probe  # noqa: E402
from encoders.asr import Transcriber  # noqa: E402
from encoders.whisper_states import WhisperStates  # noqa: E402
from fusion.labels import ravdess_native  # noqa: E402
from fusion.media.decoding import decode  # noqa: E402
from fusion.training.datasets import ravdess  # noqa: E402
from fusion.training.splits import speaker_folds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="RAVDESS speech folder")
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()

    started = time.perf_counter()
    examples = ravdess(args.data).examples
    labels = np.array([ravdess_native(Path(e.path).name) for e in examples])
    transcriber = Transcriber()
    states = WhisperStates(transcriber.model, blocks=len(transcriber.model.encoder.blocks))
    audio = [decode(e.path).audio for e in examples]
    encode_started = time.perf_counter()
    pooled = []  # per file: (blocks, 2 * dim)
    for clip in audio:
        blocks, _ = states(clip, all_blocks=True)
        pooled.append(np.concatenate([blocks.mean(1), blocks.std(1)], 1))
    encode_s = time.perf_counter() - encode_started
    pooled = np.stack(pooled)  # (files, blocks, 2 * dim)

    folds = speaker_folds(examples, args.folds)
    rows = []
    for block in range(pooled.shape[1]):
        uas = [
            pooled_probe(pooled[train, block], labels[train], pooled[test, block], labels[test]).ua
            for train, test in folds
        ]
        rows.append((f"Whisper states after block {block + 1}, mean+std, logistic regression (C={PROBE_C})", uas))
    uas = [mfcc_svm(audio, labels, train, test).ua for train, test in folds]
    rows.append(("MFCC statistics + SVM", uas))
    elapsed = time.perf_counter() - started

    lines = [
        "# Which Whisper encoder block: linear probe on RAVDESS speech, 8 classes, speaker-independent folds",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        f"Machine: {describe_machine()}; {elapsed / 60:.1f} min in all; encoding {len(examples)} files"
        f" ({sum(len(a) for a in audio) / 16000 / 60:.1f} min of audio) through all blocks took {encode_s:.0f} s.",
        f"Whisper model: {transcriber.name}. {args.folds} folds of held-out actors; UA = macro recall, mean ± std"
        " over folds.",
        "",
        "| representation | UA (%) | per fold |",
        "|---|---|---|",
    ]
    for name, values in rows:
        per_fold = ", ".join(f"{v * 100:.1f}" for v in values)
        lines.append(
            f"| {name} | {statistics.mean(values) * 100:.1f} ± {statistics.stdev(values) * 100:.1f} | {per_fold} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    torch.set_num_threads(1)  # the benchmark shares the machine's two cores
    main()
