"""Prediction for users: recordings in, emotion timelines out.

:class:`~fusion.serving.predictor.Predictor` loads a model (the shipped experts bundle or a cross-attention
checkpoint) once and streams each recording through it; :class:`~fusion.serving.prediction.Prediction` is its
result, with the one serialisation of a timeline's rows that ``fusion predict`` and ``fusion score`` both write;
:mod:`~fusion.serving.batch` scores many recordings into tables (resumable, in processes or Ray tasks), and
:mod:`~fusion.serving.plot` draws a timeline. :mod:`~fusion.serving.memory` (giving freed memory back between the
chunks of a long recording) lives here because only the predictor's chunk loop calls it. Nothing in
:mod:`fusion.training` imports this package.
"""
