"""Multimodal emotion recognition from recorded video: voice, words and face on one timeline.

>>> import fusion
>>> result = fusion.predict("interview.mp4", checkpoint="path/to/checkpoint")
>>> result.timeline.head()
>>> predictor = fusion.load("path/to/checkpoint")   # load the models once, predict many files
>>> results = [predictor.predict(path) for path in paths]
"""

from fusion.errors import CheckpointError, FusionError, MediaError, ModelNotFoundError, NoModalityError
from fusion.labels import EMOTIONS
from fusion.predictor import Prediction, Predictor, load, predict

__version__ = "0.1.0"

__all__ = [
    "EMOTIONS",
    "CheckpointError",
    "FusionError",
    "MediaError",
    "ModelNotFoundError",
    "NoModalityError",
    "Prediction",
    "Predictor",
    "load",
    "predict",
]
