"""The canonical emotion labels and how each corpus's labels map onto them.

:data:`LABEL_MAPS` is the one table: corpus -> its own label -> canonical emotion. Every other name here (the
RAVDESS file-name codes, :func:`ravdess_label`) goes through it, and the model card quotes its comments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MODALITIES: tuple[str, ...] = ("audio", "text", "video")  # in this order wherever modalities are listed
EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")

LABEL_MAPS: dict[str, dict[str, str]] = {
    "ravdess": {
        "neutral": "neutral",
        # RAVDESS calm has no canonical counterpart: it is a low-arousal display with neutral valence, the closest
        # of the seven, and merging it keeps one 7-class head across corpora (RAVDESS_NATIVE keeps the 8 classes).
        "calm": "neutral",
        # happy, sad, angry, fearful, surprised: RAVDESS names Ekman's basic emotions by adjective; same classes.
        "happy": "happiness",
        "sad": "sadness",
        "angry": "anger",
        "fearful": "fear",
        "disgust": "disgust",
        "surprised": "surprise",
    },
    # CREMA-D's file-name codes abbreviate six of the same basic emotions (HAP and SAD the adjectives happy and
    # sad); it has no surprise class.
    "crema-d": {
        "ANG": "anger",
        "DIS": "disgust",
        "FEA": "fear",
        "HAP": "happiness",
        "NEU": "neutral",
        "SAD": "sadness",
    },
    "meld": {
        "neutral": "neutral",
        # MELD annotates Ekman's six emotions plus neutral and calls happiness "joy"; same class.
        "joy": "happiness",
        "surprise": "surprise",
        "anger": "anger",
        "sadness": "sadness",
        "disgust": "disgust",
        "fear": "fear",
    },
    "fer2013": {
        # angry, happy, sad: FER2013's class names are adjectives for Ekman's emotions; same classes.
        "angry": "anger",
        "disgust": "disgust",
        "fear": "fear",
        "happy": "happiness",
        "neutral": "neutral",
        "sad": "sadness",
        "surprise": "surprise",
    },
    # nEMO (Polish emotional speech) names six of the basic emotions by noun, surprise by adjective; no disgust.
    "nemo": {
        "anger": "anger",
        "fear": "fear",
        "happiness": "happiness",
        "neutral": "neutral",
        "sadness": "sadness",
        "surprised": "surprise",
    },
    # EMOVO (Italian acted speech): labels.tsv names its seven states by the canonical nouns (corpus codes rab dis
    # pau gio neu tri sor: rabbia anger, disgusto disgust, paura fear, gioia happiness, neutro, tristezza, sorpresa).
    "emovo": {emotion: emotion for emotion in EMOTIONS},
    # Indian EmoSpeech Command (in-the-wild keywords): calm, angry, fearful, happy in the corpus, nouns in labels.tsv.
    # Calm maps to neutral as RAVDESS's calm does (the voice expert keeps calm apart as a class of its own).
    "emospeech-in": {"calm": "neutral", "anger": "anger", "fear": "fear", "happiness": "happiness"},
    # A user's image folder whose class folders already carry the canonical names.
    "images": {emotion: emotion for emotion in EMOTIONS},
}

# RAVDESS file-name code, third field (EE) -> RAVDESS's own emotion name.
RAVDESS_CODES: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
RAVDESS_NATIVE: tuple[str, ...] = tuple(RAVDESS_CODES.values())  # the 8 classes of the 8-class RAVDESS benchmark

# The seven fields of a RAVDESS file name, MM-VC-EE-II-SS-RR-AA, and the codes each may take.
RAVDESS_FIELDS: dict[str, frozenset[str]] = {
    "modality": frozenset({"01", "02", "03"}),  # audio-video, video only, audio only
    "vocal_channel": frozenset({"01", "02"}),  # speech, song
    "emotion": frozenset(RAVDESS_CODES),
    "intensity": frozenset({"01", "02"}),  # normal, strong
    "statement": frozenset({"01", "02"}),
    "repetition": frozenset({"01", "02"}),
    "actor": frozenset(f"{actor:02d}" for actor in range(1, 25)),
}


def canonical(dataset: str, native: str) -> str:
    """The canonical emotion of a corpus's own label, e.g. ``canonical("meld", "joy")`` -> ``happiness``."""
    if dataset not in LABEL_MAPS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(LABEL_MAPS)}")
    labels = LABEL_MAPS[dataset]
    if native not in labels:
        raise ValueError(f"unknown {dataset} label {native!r}: expected one of {sorted(labels)}")
    return labels[native]


def ravdess_fields(file_name: str | Path) -> dict[str, str]:
    """The codes of a RAVDESS file name or path, by field name, e.g. ``...-12.mp4`` -> ``{"actor": "12", ...}``."""
    codes = Path(file_name).name.split(".")[0].split("-")
    if len(codes) != len(RAVDESS_FIELDS):
        raise ValueError(f"not a RAVDESS file name (MM-VC-EE-II-SS-RR-AA): {str(file_name)!r}")
    fields = dict(zip(RAVDESS_FIELDS, codes))
    for name, valid in RAVDESS_FIELDS.items():
        if fields[name] not in valid:
            raise ValueError(f"not a RAVDESS file name: {str(file_name)!r} has {name} code {fields[name]!r}")
    return fields


def ravdess_native(file_name: str | Path) -> str:
    """RAVDESS's own emotion name of a file, e.g. ``01-01-02-01-02-01-12.mp4`` -> ``calm``."""
    return RAVDESS_CODES[ravdess_fields(file_name)["emotion"]]


def ravdess_label(file_name: str | Path) -> str:
    """Canonical label of a RAVDESS file from its name, e.g. ``01-01-06-01-02-01-12.mp4`` -> ``fear``."""
    return canonical("ravdess", ravdess_native(file_name))


def ravdess_actor(file_name: str | Path) -> str:
    """Actor id of a RAVDESS file, e.g. ``01-01-06-01-02-01-12.mp4`` -> ``12``."""
    return ravdess_fields(file_name)["actor"]


def label_indices(labels) -> np.ndarray:
    """Canonical labels -> (N,) int64 indices into EMOTIONS."""
    return np.array([EMOTIONS.index(label) for label in labels], dtype=np.int64)
