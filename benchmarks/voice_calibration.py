"""Calibration of the voice expert's recipe on speech it did not hear: expected calibration error of out-of-fold
probabilities, and of the same after a temperature fitted on the other folds.

    python -m benchmarks.voice_calibration --voice-oof ../cache/attn/voice_oof/probabilities \
        --out benchmarks/results/attention_fusion/voice_calibration.md

The shipped voice expert heard every RAVDESS speaker, so its own calibration cannot be measured on RAVDESS; the
out-of-fold outputs of the recipe (benchmarks/ravdess_folds.py --save-probabilities; one member per fold where the
shipped expert has three) stand in for it. Each fold in turn is scored with a temperature fitted on the others.
ECE: 15 equal-width confidence bins, in points; 7 canonical classes (calm counted as neutral). The temperature fitted
on all folds together is the one the shipped bundle gives its voice expert.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmarks.child import describe_machine
from benchmarks.ravdess_folds import read_probabilities
from fusion.experts.late_fusion import calibrated_log_probabilities
from fusion.training.calibration import fit_temperature
from fusion.training.metrics import expected_calibration_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voice-oof", required=True, help="folder of ravdess_folds.py --save-probabilities files")
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()
    folds = read_probabilities(args.voice_oof)
    lines = [
        "# Voice expert recipe: calibration on unheard speakers (out-of-fold RAVDESS)",
        "",
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.voice_calibration', *sys.argv[1:]])}`  ",
        f"Machine: {describe_machine()}",
        "",
        "| test fold | files | accuracy | ECE | temperature (fitted on the other folds) | ECE after |",
        "|---|---|---|---|---|---|",
    ]
    for fold, (probabilities, labels) in folds.items():
        others = [k for k in folds if k != fold]
        temperature = fit_temperature(
            np.concatenate([folds[k][0] for k in others]), np.concatenate([folds[k][1] for k in others])
        )
        after = np.exp(calibrated_log_probabilities(probabilities, temperature))
        lines.append(
            f"| {fold} | {len(labels)} | {100 * np.mean(probabilities.argmax(1) == labels):.1f} "
            f"| {100 * expected_calibration_error(probabilities, labels):.1f} | {temperature:.2f} "
            f"| {100 * expected_calibration_error(after, labels):.1f} |"
        )
    pooled = fit_temperature(
        np.concatenate([f[0] for f in folds.values()]), np.concatenate([f[1] for f in folds.values()])
    )
    lines += [
        "",
        f"Temperature fitted on all {sum(len(f[1]) for f in folds.values())} out-of-fold outputs: **{pooled:.2f}** "
        "(the shipped bundle's voice temperature: `fusion bundle --voice-temperature`).",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
