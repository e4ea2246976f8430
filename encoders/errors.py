"""The root of every error this project raises about a specific input, checkpoint or model.

:class:`FusionError` is defined here, at the lowest layer, so that the encoders can raise errors under it
(:class:`encoders.loading.ModelNotFoundError`) without importing :mod:`fusion`, which they must not; :mod:`fusion`
re-exports it as ``fusion.FusionError``, the one class a caller catches.
"""


class FusionError(Exception):
    """Base class of the errors raised about a specific input file, checkpoint or pretrained model."""
