"""The exceptions a user of :mod:`fusion` can catch."""

from __future__ import annotations

import os

from encoders.loading import ModelNotFoundError


class FusionError(Exception):
    """Base class of the errors raised by :mod:`fusion` about a specific input or checkpoint."""


class FileError(FusionError):
    """An error about one input file: ``path`` is the file, ``reason`` what is wrong with it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickled with its own arguments, to cross from the decoding process (fusion.streaming)
        return type(self), (self.path, self.reason), self.__dict__


class MediaError(FileError):
    """A file could not be decoded: missing, empty, truncated, or not a media file FFmpeg reads."""


class NoModalityError(FileError):
    """A recording has nothing to predict from: no audio track and no face in any sampled frame."""


class CheckpointError(FusionError):
    """A checkpoint is missing, unreadable, or incompatible with this version of the code."""


__all__ = ["FusionError", "FileError", "MediaError", "NoModalityError", "CheckpointError", "ModelNotFoundError"]
