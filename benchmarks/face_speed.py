"""Face CNN candidates on this CPU: multiply-adds per 48x48 crop, training and inference images/s, fp32 vs bf16
autocast, channels-last vs not. What chose the face expert's backbone (fusion.experts.face).

    python -m benchmarks.face_speed --out benchmarks/results/face_expert/speed.md

Training: forward, backward and an AdamW step on random 48x48 crops with a 7-way head, batch --batch (the face
expert's); the first steps are warm-up and not timed. Inference: batches of --infer-batch crops (default the face
expert's CPU batch, fusion.experts.face PREDICT_BATCH), no gradient. The machine should be otherwise idle.

The committed benchmarks/results/face_expert/speed.md was made with inference batches of 32 crops (the predictor's
CPU batch then: --infer-batch 32) and also timed the retired cross-attention model's face CNN (FaceCNN, at git tag
cross-attention-family).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.child import describe_machine
from encoders.face_lite import LiteFaceNet
from fusion.experts.face import PREDICT_BATCH

CANDIDATES = {
    "EfficientNet-Lite0, stem stride 1 (the face expert)": lambda: LiteFaceNet(stem_stride=1),
    "EfficientNet-Lite0, stem stride 2": lambda: LiteFaceNet(stem_stride=2),
}
WARMUP_STEPS = 3
TIMED_STEPS = 8


def multiply_adds(model: nn.Module) -> int:
    """Multiply-adds of one 48x48 crop through the convolutions and linear layers (hooks count their outputs)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.rand(1, 1, 48, 48))
    for hook in hooks:
        hook.remove()
    return total


def speed(build, *, bf16: bool, channels_last: bool, batch: int, infer_batch: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build()
    head = nn.Linear(model.dim, 7)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
    x = torch.rand(batch, 1, 48, 48).contiguous(memory_format=memory_format)
    y = torch.randint(0, 7, (batch,))
    model.train()
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(head(model(x)).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train = batch * TIMED_STEPS / (time.perf_counter() - started)
    model.eval()
    crops = torch.rand(infer_batch, 1, 48, 48).contiguous(memory_format=memory_format)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for step in range(WARMUP_STEPS + 4 * TIMED_STEPS):
            if step == WARMUP_STEPS:
                started = time.perf_counter()
            model(crops)
    infer = len(crops) * 4 * TIMED_STEPS / (time.perf_counter() - started)
    return train, infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="training batch (the face expert's default)")
    parser.add_argument(
        "--infer-batch",
        type=int,
        default=PREDICT_BATCH["cpu"],
        help=f"inference batch (default {PREDICT_BATCH['cpu']}: the face expert's CPU batch)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/face_expert/speed.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lines = [
        "# Face CNN candidates: cost and speed on this CPU",
        "",
        f"Command: `python -m benchmarks.face_speed {' '.join(sys.argv[1:])}`  ",
        f"Machine: {describe_machine()}  ",
        "",
        f"Training images/s: batch {args.batch}, forward + backward + AdamW step. Inference crops/s: batches of "
        f"{args.infer_batch}, no gradient.",
        "",
        "| model | parameters | multiply-adds per crop | precision | layout | training images/s | inference crops/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, build in CANDIDATES.items():
        model = build()
        parameters = sum(p.numel() for p in model.parameters())
        macs = multiply_adds(model)
        for bf16 in (False, True):
            for channels_last in (False, True):
                train, infer = speed(
                    build, bf16=bf16, channels_last=channels_last, batch=args.batch, infer_batch=args.infer_batch
                )
                lines.append(
                    f"| {name} | {parameters / 1e6:.2f}M | {macs / 1e6:.0f}M | {'bf16' if bf16 else 'fp32'} | "
                    f"{'channels-last' if channels_last else 'contiguous'} | {train:.0f} | {infer:.0f} |"
                )
                print(lines[-1], flush=True)
    lines += ["", f"Wall time: {time.perf_counter() - started:.0f} s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
