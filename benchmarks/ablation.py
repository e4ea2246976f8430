"""Modality ablations for the committed results: `fusion ablate` (fusion/training/ablation.py) under the
benchmarks' roof.

    python benchmarks/ablation.py ravdess=../shared/data/ravdess-speech-16k --cache ../cache --folds 3 --seeds 3 \
        --epochs 7 --workers 2 --out benchmarks/results/ravdess_speech

Takes the same arguments as `fusion ablate` (run it with --help) and writes ablation.md, ablation.json and
ablation.png, with this command and the machine in the first two.
"""

from __future__ import annotations

import sys

from fusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
