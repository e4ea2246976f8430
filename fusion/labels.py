"""The canonical emotion labels and how each corpus's labels map onto them."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")

# RAVDESS file-name code, third field (EE). "calm" has no canonical counterpart: it is a low-arousal,
# neutral-valence display, so it maps to neutral (the model card states this choice).
RAVDESS_EMOTIONS: dict[str, str] = {
    "01": "neutral",
    "02": "neutral",  # calm
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}


def ravdess_label(file_name: str) -> str:
    """Canonical label of a RAVDESS file from its name, e.g. ``01-01-06-01-02-01-12.mp4`` -> ``fear``."""
    fields = file_name.split(".")[0].split("-")
    if len(fields) != 7 or fields[2] not in RAVDESS_EMOTIONS:
        raise ValueError(f"not a RAVDESS file name (MM-VC-EE-II-SS-RR-AA): {file_name!r}")
    return RAVDESS_EMOTIONS[fields[2]]


def ravdess_actor(file_name: str) -> str:
    """Actor id of a RAVDESS file, e.g. ``01-01-06-01-02-01-12.mp4`` -> ``12``."""
    return file_name.split(".")[0].split("-")[6]
