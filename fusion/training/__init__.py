"""Training the model (fusion.experts) and measuring it: a model is trained here and run by fusion.serving.

:mod:`~fusion.training.loop` is the one training loop (resumable, bf16 autocast, early stopping) that
:mod:`~fusion.training.voice`, :mod:`~fusion.training.text`, :mod:`~fusion.training.face` and
:mod:`~fusion.training.attention` extend; :mod:`~fusion.training.calibration` fits late fusion and
:mod:`~fusion.training.bundle` writes the bundle (``fusion bundle``), the whole of it by a
:mod:`~fusion.training.recipe`. :mod:`~fusion.training.datasets` reads corpora as labelled manifests and splits them
by speaker, :mod:`~fusion.training.augment` perturbs inputs, :mod:`~fusion.training.cache` holds what the caches
share, :mod:`~fusion.training.metrics` defines UA, WA, the F1 scores and ECE, :mod:`~fusion.training.statistics`
their bootstrap intervals; an ablation is the experiment (:mod:`~fusion.training.ablation`) and its report
(:mod:`~fusion.training.ablation_report`). Nothing here imports :mod:`fusion.serving`: training reads recordings
through :mod:`fusion.media` alone.
"""
