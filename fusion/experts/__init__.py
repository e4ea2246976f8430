"""Per-modality experts: each modality's encoder trained alone, with its own head, as a stage before fusion.

Each module owns one modality's expert (:mod:`fusion.experts.audio`, :mod:`fusion.experts.text`): its model, its
training (resumable, state saved every epoch), its checkpoint, and the ``fusion train-expert MODALITY`` command,
through two functions every expert module has: ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

EXPERTS = ("audio", "text", "face")  # modules of this package that `fusion train-expert` offers
