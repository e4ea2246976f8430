"""Files on disk: every write is atomic, and weights are safetensors (no pickle).

Each write goes to a temporary name beside its target and is renamed over it, so a process killed mid-write (or a
full disk) leaves the previous file, never half of one. An expert's checkpoint folder holds WEIGHTS_FILE and
CONFIG_FILE; the training state (fusion.training.loop) and the caches are written through the same functions.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

WEIGHTS_FILE = "model.safetensors"  # an expert's weights, in every checkpoint folder
CONFIG_FILE = "config.json"  # its settings, beside them
STORED_DTYPES = {"float16": torch.float16, "int8": torch.int8}  # how a shipped copy may store its weights, by name
INT8_SCALE = ".int8_scale"  # suffix of the float32 per-row scales stored beside a weight kept in int8
INT8_MIN_ELEMENTS = 4096  # smaller tensors (biases, BatchNorm, small heads) stay in float16 under dtype int8


def save_weights(path: Path, tensors: dict[str, torch.Tensor], *, dtype: torch.dtype | None = None, metadata=None):
    """A safetensors file of tensors (floating ones cast to dtype when given), written atomically like write_atomic.

    dtype torch.int8 stores each floating weight of at least INT8_MIN_ELEMENTS elements as int8 with one float32
    scale per output row (symmetric, round to nearest), and the other floating tensors as float16: about a quarter
    of float32's bytes. :func:`load_weights` gives float32 back.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if dtype is torch.int8:
        tensors = _quantize_int8(tensors)
    elif dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata=metadata)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors save_weights wrote, floating ones as float32 (int8 ones multiplied back by their scales).

    The one guard of every weights file read: a missing, truncated or damaged file is a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fusion.errors import CheckpointError

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable weights file ({error}); reinstall or retrain it") from error
    out = {}
    for key, value in tensors.items():
        if key.endswith(INT8_SCALE):
            continue
        scale = tensors.get(key + INT8_SCALE)
        if scale is not None:
            value = value.float() * scale.reshape(-1, *[1] * (value.ndim - 1))
        out[key] = value.float() if value.is_floating_point() else value
    return out


def _quantize_int8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        if not value.is_floating_point():
            out[key] = value
        elif value.ndim >= 2 and value.numel() >= INT8_MIN_ELEMENTS:
            rows = value.float().reshape(len(value), -1)
            scale = rows.abs().amax(1).clamp_min(1e-12) / 127
            out[key] = (rows / scale[:, None]).round().clamp(-127, 127).to(torch.int8).reshape(value.shape)
            out[key + INT8_SCALE] = scale
        else:
            out[key] = value.to(torch.float16)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside path to write to; when the block ends it is flushed to disk, given the usual mode
    (0666 less the umask) and renamed to path, so that whoever reads path, even after a crash, sees the old file or
    the whole new one; if the block raises (a full disk), the temporary file is removed and path is untouched."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield temporary
        temporary.chmod(0o666 & ~_umask())
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """data to a temporary file beside path, then renamed to path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_output(path: str | os.PathLike, data: bytes) -> None:
    """A user's output file (a table, JSON): written like write_atomic, a failure to write (a full disk, a folder
    gone) an OutputError naming the file, and nothing half-written left at path."""
    from fusion.errors import OutputError

    try:
        write_atomic(Path(path), data)
    except OSError as error:
        raise OutputError(path, f"cannot write: {error.strerror or error}") from error


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Plain arrays (no pickle) as an .npz at path, written like write_atomic (a crash leaves no partial entry);
    the folder is made when missing. The caches of features and expert outputs store their entries so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
