"""Where the pretrained models come from: an argument, an environment variable, or a name.

Every encoder that needs pretrained weights asks :func:`choose_model` which model to load and raises
:class:`ModelNotFoundError` when that model cannot be had, so a missing model always reads the same way:
which model, what was tried, and how to point at a local copy. The three frozen models a recording's features
come from travel together as one :class:`EncoderSources`, resolved once by whoever loads them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from encoders.errors import FusionError

WHISPER_ENV = "FUSION_WHISPER_MODEL"
TEXT_ENV = "FUSION_TEXT_MODEL"
FACE_ENV = "FUSION_FACE_MODEL"
ASR_ENV = "FUSION_ASR_MODEL"  # the CTranslate2 conversion of the Whisper model, for the ctranslate2 backend

VERBOSE_ENV = "FUSION_VERBOSE"  # 1: the libraries' own progress bars and warnings while models load (`--verbose`)

DEFAULT_WHISPER_MODEL = "tiny.en"
ASR_BACKENDS = ("ctranslate2", "openai-whisper")  # how Whisper decodes (encoders.asr)
DEFAULT_ASR = "ctranslate2"  # as accurate as openai-whisper, and faster on this CPU: benchmarks/results/asr
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


@dataclass(frozen=True)
class EncoderSources:
    """The frozen models behind a recording's features, each a name or a path: Whisper, the text (BERT) model and
    the face detector (a YuNet .onnx; None: OpenCV's Haar cascade); and which backend runs Whisper's decoding.

    As given (by arguments, command-line flags), a field left None is not chosen; :meth:`resolve` fills every field
    once, and what it returns is what gets loaded.
    """

    whisper: str | None = None
    text: str | None = None
    face: str | None = None
    asr: str | None = None  # the speech recognition backend (encoders.asr.ASR_BACKENDS; default ctranslate2)
    # the ctranslate2 backend's model (tiny.en, base or a CTranslate2 folder); default $FUSION_ASR_MODEL, else the
    # conversion of `whisper`. The voice's states still come from `whisper`, the model its expert was trained on.
    asr_model: str | None = None

    def __post_init__(self):
        for name in (
            "whisper",
            "text",
            "face",
            "asr_model",
        ):  # paths are kept as strings: the value is hashed, pickled, compared
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))

    def resolve(self, checkpoint: EncoderSources | None = None) -> EncoderSources:
        """Each model: the one chosen here, else its environment variable (FUSION_WHISPER_MODEL, FUSION_TEXT_MODEL,
        FUSION_FACE_MODEL), else the one the checkpoint names, else the default (tiny.en, all-MiniLM-L6-v2, Haar).
        A resolved value resolves to itself."""
        named = checkpoint or EncoderSources()
        return EncoderSources(
            whisper=choose_model(self.whisper, env_var=WHISPER_ENV, default=named.whisper or DEFAULT_WHISPER_MODEL),
            text=choose_model(self.text, env_var=TEXT_ENV, default=named.text or DEFAULT_TEXT_MODEL),
            face=choose_model(self.face, env_var=FACE_ENV, default=named.face),
            asr=self.asr or DEFAULT_ASR,
            asr_model=choose_model(self.asr_model, env_var=ASR_ENV, default=None),
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


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Load models without the libraries' own noise on stderr: transformers' "Loading weights" progress bars and
    the deprecation warnings of transformers and peft, which say nothing a user of fusion can act on. With
    FUSION_VERBOSE=1 (the command line's --verbose) they are shown."""
    if os.environ.get(VERBOSE_ENV) == "1":
        yield
        return
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()
