"""Where the pretrained models come from: an argument, an environment variable, or a name.

Every encoder that needs pretrained weights asks :func:`choose_model` which model to load and raises
:class:`ModelNotFoundError` when that model cannot be had, so a missing model always reads the same way:
which model, what was tried, and how to point at a local copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from encoders.errors import FusionError

WHISPER_ENV = "FUSION_WHISPER_MODEL"
TEXT_ENV = "FUSION_TEXT_MODEL"
FACE_ENV = "FUSION_FACE_MODEL"

DEFAULT_WHISPER_MODEL = "tiny.en"
DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class ModelNotFoundError(FusionError, RuntimeError):
    """A pretrained model could not be loaded from a local path or downloaded by name (still a RuntimeError, as it
    was before it joined :class:`FusionError`)."""

    def __init__(self, *, what: str, requested: str, env_var: str, argument: str, reason: str):
        self.what = what
        self.requested = requested
        super().__init__(
            f"{what} '{requested}' could not be loaded: {reason}. "
            f"Point at a local copy with the environment variable {env_var}=/path/to/model "
            f"or the argument {argument}=..., or connect to the internet so it can be downloaded by name."
        )


def choose_model(explicit: str | os.PathLike | None, *, env_var: str, default: str | None) -> str | None:
    """The model to load: the explicit argument, else the environment variable, else the default name."""
    if explicit is not None:
        return os.fspath(explicit)
    from_env = os.environ.get(env_var, "").strip()
    if from_env:
        return from_env
    return default


def looks_like_path(name_or_path: str) -> bool:
    """True when the string names a file system location rather than a hub / registry name."""
    # The string tests come first, so "~someone/..." is a path without expanduser(), which raises when that
    # user has no home directory.
    return (
        name_or_path.startswith((".", "/", "~"))
        or name_or_path.endswith((".pt", ".onnx", ".safetensors"))
        or Path(name_or_path).is_absolute()  # also C:\ and C:/ on Windows
        or ("/" in name_or_path or os.sep in name_or_path)
        and not _is_hub_id(name_or_path)
        or Path(name_or_path).exists()
    )


def _is_hub_id(name: str) -> bool:
    # Hugging Face ids are "org/name": exactly one slash and no path-like pieces.
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def portable_name(name_or_path: str, *, default: str) -> str:
    """The name to record in a checkpoint for a model loaded from name_or_path.

    A local copy of the default model (a file or folder named like it, e.g. ``.../tiny.en.pt`` for ``tiny.en`` or
    ``.../all-MiniLM-L6-v2`` for ``sentence-transformers/all-MiniLM-L6-v2``) is recorded by the default's name, so
    the checkpoint works on other machines; any other path is recorded as it is.
    """
    if not looks_like_path(name_or_path):
        return name_or_path
    stem = Path(name_or_path).name.removesuffix(".pt")
    return default if stem == default.split("/")[-1] else name_or_path
