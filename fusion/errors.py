"""The exceptions a user of :mod:`fusion` can catch."""

from __future__ import annotations

import os
import tempfile

from encoders.errors import FusionError  # the root, defined where the encoders can raise under it too
from encoders.loading import ModelNotFoundError


class FileError(FusionError):
    """An error about one input file: ``path`` is the file, ``reason`` what is wrong with it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickled with its own arguments, to cross from the decoding process (fusion.media.streaming)
        return type(self), (self.path, self.reason), self.__dict__


class MediaError(FileError):
    """A file could not be decoded: missing, empty, truncated, or not a media file FFmpeg reads."""


class NoSpeakerError(FileError):
    """A recording has no speaker of the name asked for (``fusion predict --speaker S3`` where two people speak)."""


class NoModalityError(FileError):
    """A recording has nothing to predict from: no audio track and no face in any sampled frame."""


class OutputError(FileError):
    """An output file cannot be written: its folder is missing or not writable, or the file is not writable."""


class CheckpointError(FusionError):
    """A checkpoint is missing, unreadable, or incompatible with this version of the code."""


__all__ = [
    "FusionError",
    "FileError",
    "MediaError",
    "NoModalityError",
    "OutputError",
    "CheckpointError",
    "ModelNotFoundError",
]


def check_writable(path: str | os.PathLike) -> None:
    """Raise OutputError unless a file can be written at path: checked before any work, so a long run never ends in
    a write that fails."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise OutputError(path, f"cannot write here: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise OutputError(path, "cannot write here: it is a folder")
    try:  # a real write is the only sure test: root passes access() checks on read-only file systems
        with tempfile.TemporaryFile(dir=folder):
            pass
        if os.path.exists(path):
            with open(path, "ab"):
                pass
    except OSError as error:
        raise OutputError(path, f"cannot write here: {error.strerror or error}") from error
