"""Where the models run: CUDA with bf16 autocast when there is a GPU, else the CPU in float32."""

from __future__ import annotations

import contextlib

import torch

# The arithmetic a model may be asked to run in: float32, or bf16 autocast (on the CPU too; always on CUDA).
PRECISIONS = ("fp32", "bf16")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, *, cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; on the CPU only when cpu_bf16 is asked for (a no-op otherwise): bf16 matmuls are slower
    than float32 on most CPUs, and a model asks for it where it was measured to pay (e.g. the voice expert)."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
