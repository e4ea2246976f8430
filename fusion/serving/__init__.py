"""Prediction for users: recordings in, emotion timelines out.

:class:`~fusion.serving.predictor.Predictor` loads an experts bundle once and streams each recording through it;
:class:`~fusion.serving.prediction.Prediction` is its result, with its :class:`~fusion.serving.prediction.Summary`
and the one serialisation of a timeline's rows that ``fusion predict`` and ``fusion score`` both write;
:mod:`~fusion.serving.speakers` adds who speaks when and who is on camera; :mod:`~fusion.serving.batch` scores many
recordings into tables (resumable, in processes or Ray tasks), and :mod:`~fusion.serving.plot` draws a timeline.
Nothing in :mod:`fusion.training` imports this package, and nothing here imports fusion.training.
"""
