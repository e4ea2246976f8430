"""Out-of-fold outputs of an expert: what its recipe predicts for recordings whose speakers it never heard.

An ablation replaces a bundle's expert that heard the test speakers by these (fusion.training.ablation). Files of
`{...}seed{S}-fold{K}.npz` hold `paths` (N,) and `probabilities` (N, len(EMOTIONS)), as
benchmarks/ravdess_folds.py --save-probabilities writes them; they are matched to recordings by
:func:`recording_key`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion.labels import EMOTIONS, MODALITIES, ravdess_fields

OUT_OF_FOLD_NAME = re.compile(r"seed(\d+)-fold(\d+)\.npz$")


def recording_key(path: str | os.PathLike) -> str:
    """What identifies a performance across a corpus's file formats: for a RAVDESS name every field but the first
    (the format: 01 audio-visual, 02 video-only, 03 audio-only), else the file name without its suffix."""
    try:
        fields = ravdess_fields(path)
    except ValueError:
        return Path(path).stem
    return "ravdess:" + "-".join(list(fields.values())[1:])


def read_out_of_fold(folder: str | os.PathLike) -> dict[int, dict[str, np.ndarray]]:
    """{seed: {recording key: (len(EMOTIONS),) probabilities}} from the `*seed{S}-fold{K}.npz` files of a folder."""
    seeds: dict[int, dict[str, np.ndarray]] = {}
    paths = sorted(p for p in Path(folder).glob("*.npz") if OUT_OF_FOLD_NAME.search(p.name))
    if not paths:
        raise FileNotFoundError(f"{folder}: no out-of-fold outputs (files named *seed<S>-fold<K>.npz)")
    for path in paths:
        seed = int(OUT_OF_FOLD_NAME.search(path.name).group(1))
        with np.load(path, allow_pickle=False) as data:
            names, probabilities = data["paths"], data["probabilities"]
        if probabilities.shape != (len(names), len(EMOTIONS)):
            raise ValueError(f"{path}: probabilities of shape {probabilities.shape}, expected ({len(names)}, 7)")
        outputs = seeds.setdefault(seed, {})
        for name, row in zip(names, probabilities):
            key = recording_key(str(name))
            if key in outputs:
                raise ValueError(f"{path}: seed {seed} has a second output for {name}")
            outputs[key] = row.astype(np.float64)
    return seeds


def read_specs(specs: Sequence[str]) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """["audio=DIR", ...] -> {modality: {seed: {recording key: probabilities}}}, folders of one modality merged."""
    merged: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for spec in specs:
        modality, _, folder = spec.partition("=")
        if modality not in MODALITIES or not folder:
            raise ValueError(f"out-of-fold outputs are MODALITY=FOLDER with a modality of {MODALITIES}: {spec!r}")
        for seed, outputs in read_out_of_fold(folder).items():
            if seed in merged.setdefault(modality, {}):
                raise ValueError(f"{folder}: {modality} outputs of seed {seed} are also in another folder")
            merged[modality][seed] = outputs
    return merged
