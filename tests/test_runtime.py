"""How the models run at inference: batch norms folded into convolutions, and the allocator's reuse of freed blocks."""

from __future__ import annotations

import resource
import subprocess
import sys

import torch
from torch import nn

from encoders.audio import SpectrogramCNN
from encoders.face_lite import LiteFaceNet
from encoders.runtime import fold_batch_norms


def _random_statistics(model: nn.Module) -> nn.Module:
    """Batch norms with running statistics and affine weights far from their initial 0 / 1, as trained ones have."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.randn(n, generator=generator))
                module.bias.data.copy_(torch.randn(n, generator=generator))
    return model.eval()


@torch.inference_mode()
def test_folding_keeps_the_spectrogram_cnns_tokens_random_init():
    torch.manual_seed(0)
    cnn = _random_statistics(SpectrogramCNN(dim=32, strided=True))
    mel, mask = torch.randn(3, 200, 64), torch.ones(3, 200, dtype=torch.bool)
    mask[1, 120:] = False
    before, _ = cnn(mel, mask)
    fold_batch_norms(cnn)
    assert not any(isinstance(m, nn.BatchNorm2d) for block in cnn.blocks for m in block.modules())
    after, _ = cnn(mel, mask)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_folding_keeps_the_face_networks_features_random_init():
    torch.manual_seed(0)
    net = _random_statistics(LiteFaceNet())
    pixels = torch.rand(2, 1, 48, 48)
    before = net(pixels)
    fold_batch_norms(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(net(pixels), before, atol=1e-3, rtol=1e-3)


# In a fresh process, so that no earlier test left free room at the heap's top, from which glibc serves a block of
# any size without a mapping of its own.
FAULTS = """
import resource, torch
from encoders.memory import bound_allocator, reusing_freed_blocks

def faults(times):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        block = torch.ones(4 * 2**20, dtype=torch.uint8)  # every page touched
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()

bound_allocator()
outside = faults(10)
entering = rss()
with reusing_freed_blocks():
    faults(1)  # the heap grows once
    inside = faults(10)
    held = rss() - entering
print(outside, inside, held, rss() - entering)
"""


def test_freed_blocks_are_reused_inside_and_mapped_afresh_outside():
    # Linux with glibc, where the project runs and CI tests (elsewhere encoders.memory does nothing)
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True).stdout
    outside, inside, held, left = map(int, out.split())
    pages = 10 * 4 * 2**20 // resource.getpagesize()  # of ten 4 MB blocks
    assert outside >= 0.9 * pages  # a mapping of its own each time: every page faulted in afresh
    assert inside < 0.8 * outside  # freed pages reused (most of them: glibc gives some back to the system anyway)
    assert held >= 2 * 2**20  # inside, a freed block is kept for the next one
    assert left <= 2**20  # on leaving, what the heap kept goes back to the system
