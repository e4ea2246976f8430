"""What every expert's training shares: its resumable state on disk, and atomic writes of weights and files.

The state holds tensors and plain values only (torch.save, read back with ``weights_only=True``: no pickled code);
each write goes to a temporary name and is renamed over the old file, so a run killed mid-write keeps the previous
epoch's state. The settings it was saved with are stored too, and resuming with other settings is refused.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from fusion.errors import CheckpointError


def save_training_state(
    path: Path, *, weights: dict, optimizer, schedule, generator: torch.Generator, settings: dict, progress: dict
) -> None:
    """The trainable weights, optimiser, schedule, both random generators, the run's settings and its `progress`
    (epoch, history, ...), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(
        {
            "weights": weights,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "settings": json.dumps(settings, sort_keys=True),
            "progress": json.dumps(progress),
        },
        temporary,
    )
    os.replace(temporary, path)


def load_training_state(
    path: Path, *, optimizer, schedule, generator: torch.Generator, settings: dict
) -> tuple[dict, dict]:
    """Restore the optimiser, schedule and random generators that save_training_state wrote; returns the weights
    (for the caller to load into its model) and the progress. CheckpointError if the settings differ."""
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    saved = torch.load(path, weights_only=True)
    if json.loads(saved["settings"]) != json.loads(json.dumps(settings, sort_keys=True)):
        raise CheckpointError(f"{path}: saved with other settings ({saved['settings']}); resume with the same ones")
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    return saved["weights"], json.loads(saved["progress"])


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
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(tensors, temporary, metadata=metadata)
    os.replace(temporary, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors save_weights wrote, floating ones as float32 (int8 ones multiplied back by their scales)."""
    from safetensors.torch import load_file

    tensors = load_file(path)
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


def write_atomic(path: Path, data: bytes) -> None:
    """data to a temporary file beside path, then renamed to path."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Plain arrays (no pickle) as an .npz at path, written like write_atomic (a crash leaves no partial entry);
    the folder is made when missing. The caches of features and expert outputs store their entries so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
