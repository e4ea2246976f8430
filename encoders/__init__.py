"""Per-modality encoders: log-mel + spectrogram CNN (audio), Whisper + BERT (text), face detector + face CNN (video)."""

from encoders.loading import ModelNotFoundError

__all__ = ["ModelNotFoundError"]
