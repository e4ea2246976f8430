"""Argument types of the command line, shared by the commands that train, bundle and predict.

This module imports nothing heavy, so that ``fusion --help`` and argument errors stay quick.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusion.labels import MODALITIES

ENGINES = ("local", "ray")  # how `fusion score` runs its workers: local processes, or Ray tasks (fusion.serving.batch)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


EXPERT_NAMES = ("voice", "text", "face")  # a bundle's experts, as the command line names them


def expert_names(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated expert names, e.g. voice,text."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in EXPERT_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names from {', '.join(EXPERT_NAMES)}: {text!r}")
    return names


def speaker_name(text: str) -> str:
    """argparse type: S1, S2, ... (a speaker by order of first speech), on-camera or all."""
    if text in ("on-camera", "all") or (text[:1] == "S" and text[1:].isdigit() and int(text[1:]) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"expected S1, S2, ..., on-camera or all: {text!r}")


def out_of_fold_spec(text: str) -> str:
    """argparse type: MODALITY=FOLDER, a modality the models know and a folder of *seed<S>-fold<K>.npz files."""
    modality, _, folder = text.partition("=")
    if modality not in MODALITIES or not folder:
        known = ", ".join(MODALITIES)
        raise argparse.ArgumentTypeError(f"expected MODALITY=FOLDER with a modality of {known}: {text!r}")
    if not any(Path(folder).glob("*seed*-fold*.npz")):
        raise argparse.ArgumentTypeError(f"{folder}: no *seed<S>-fold<K>.npz files of out-of-fold outputs")
    return text
