"""Training the cross-attention model and measuring it: corpora, the feature cache, augmentation, training,
metrics and the modality ablations.

:mod:`~fusion.training.datasets` reads corpora as labelled manifests and splits them by speaker;
:mod:`~fusion.training.cache` stores each example's features once; :mod:`~fusion.training.augment` perturbs the
cached log-mel frames and face crops; :mod:`~fusion.training.train` fits a model and writes a checkpoint;
:mod:`~fusion.training.metrics` defines UA, WA and the F1 scores, :mod:`~fusion.training.statistics` their bootstrap
intervals; an ablation is the experiment (:mod:`~fusion.training.ablation`) and its report
(:mod:`~fusion.training.ablation_report`). The experts (:mod:`fusion.experts`) train with these pieces too. Nothing
here imports :mod:`fusion.serving`: training reads recordings through :mod:`fusion.media` alone.
"""
