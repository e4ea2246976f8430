"""Multimodal emotion recognition from recorded video: voice, words and face on one timeline.

>>> import fusion
>>> result = fusion.predict("interview.mp4", checkpoint="path/to/checkpoint")
>>> result.timeline.head()
>>> predictor = fusion.load("path/to/checkpoint")   # load the models once, predict many files
>>> results = [predictor.predict(path) for path in paths]
"""

import os

# Idle OpenMP threads (torch's) sleep at once instead of spinning for a while, because the decoding process
# (fusion.media.streaming.DecodeWorker) needs the core they would spin on; on a 2-core machine spinning threads slowed
# Whisper down markedly while it ran. It only takes effect if torch is not imported yet; a value already set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fusion.errors import (
    CheckpointError,
    FusionError,
    MediaError,
    ModelNotFoundError,
    NoModalityError,
    OutputError,
)
from fusion.labels import EMOTIONS

_PREDICTOR_NAMES = ("Prediction", "Predictor", "load", "predict")


def __getattr__(name: str):
    # fusion.serving.predictor (torch, Whisper, transformers) is imported on first use, so that a process that needs
    # only a light module, such as the decoding process (fusion.media.decode_worker), does not pay seconds to import it
    if name in _PREDICTOR_NAMES:
        from fusion.serving import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'fusion' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "EMOTIONS",
    "CheckpointError",
    "FusionError",
    "MediaError",
    "ModelNotFoundError",
    "NoModalityError",
    "OutputError",
    "Prediction",
    "Predictor",
    "load",
    "predict",
]
