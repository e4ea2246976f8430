"""Modality ablations for the committed results: `fusion ablate` (fusion/training/ablation.py) under the benchmarks'
roof. The shipped model on RAVDESS speech, its voice expert out of fold:

    python benchmarks/ablation.py ravdess=../shared/data/ravdess-speech-16k \
        --out-of-fold audio=../cache/attn/voice_oof/probabilities \
        --out-of-fold audio=../cache/attn/voice_oof_s12/probabilities \
        --folds 3 --cache ../cache/ablation --out benchmarks/results/ravdess_speech

Takes the same arguments as `fusion ablate` (run it with --help): without --experts BUNDLE it ablates the shipped
model ($FUSION_CHECKPOINT, if set). Writes ablation.md, ablation.json and ablation.png, with this command and the
machine in the first two.
"""

from __future__ import annotations

import sys

from fusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
