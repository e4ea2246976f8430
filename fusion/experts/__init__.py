"""The model, for inference: per-modality experts, and the fusion stage over their outputs.

:mod:`~fusion.experts.voice` (spectrogram CNN + Whisper states), :mod:`~fusion.experts.text` (BERT with merged LoRA
adapters) and :mod:`~fusion.experts.face` (EfficientNet-Lite0 on 48x48 crops) each score a segment of the timeline
from its own modality; :mod:`~fusion.experts.late_fusion` pools their calibrated probabilities, and
:mod:`~fusion.experts.attention` is the learned fusion (cross-attention over their outputs' tokens).
:mod:`~fusion.experts.bundle` loads the three and their fusion from one folder (the shipped model). Nothing here
trains (:mod:`fusion.training`) or reads the command line; neither of those is imported here.
"""
