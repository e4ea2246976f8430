"""Where the models run: CUDA with bf16 autocast when there is a GPU, else the CPU in float32."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """For inference only: every BatchNorm that directly follows a convolution folded into that convolution's
    weights and bias, and replaced by an identity. The same function to within float rounding, one pass and one
    activation-sized tensor fewer per convolution (on this CPU fewer fresh pages, see encoders.memory). In
    place; returns the model, in eval mode. Pairs are an nn.Sequential's consecutive (Conv2d, BatchNorm2d) children,
    and modules that fold their own (a ``fold_batch_norm`` method, e.g. encoders.audio.ConvBlock)."""
    model.eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
        elif hasattr(module, "fold_batch_norm"):
            module.fold_batch_norm()
    return model
