"""From a recording to the frozen encoders' features: decoding, streaming in chunks, and the decoding process.

:mod:`~fusion.media.decoding` reads a file's audio and sampled frames with PyAV; :mod:`~fusion.media.streaming` cuts
a long recording into chunks at quiet moments and runs that reading (with face detection and voice activity) in
the decoding process, :mod:`~fusion.media.decode_worker`. :mod:`~fusion.media.features` (Whisper, BERT, the face
crops) lives here too, because it is the one path from a recording to the model's inputs that both training (the
feature cache) and serving read recordings through, so neither has to import the other. So does
:mod:`~fusion.media.orphans`: it was written for the decoding process, and the worker pools of batch scoring and
of the ablations, which also must not outlive their parent, take it from here.
"""
