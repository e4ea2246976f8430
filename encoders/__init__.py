"""Per-modality encoders: log-mel + spectrogram CNN (audio), Whisper + BERT (text), face detector + face CNN (video)."""

from encoders.errors import FusionError
from encoders.loading import ModelNotFoundError

# Hz: the one audio rate of the project. Whisper and Silero VAD's 16 kHz model take it, fusion.media.decoding
# resamples every audio track to it, and the log-mel front end reads it.
SAMPLE_RATE = 16_000

__all__ = ["SAMPLE_RATE", "FusionError", "ModelNotFoundError"]
