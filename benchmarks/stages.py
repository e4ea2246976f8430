"""Time each stage of prediction on one file: decode, log-mel, Whisper, BERT, face detection, and the model's own
stages (face CNN, audio CNN, fusion; or Whisper states and the experts).

    python benchmarks/stages.py ../shared/data/av-clips/ravdess/01-01-01-01-01-01-01.mp4 --repeats 5

Models are loaded once before timing and the first prediction is a warm-up. Without --checkpoint the fusion
model is randomly initialised: the times are the same as a trained model's, the predictions are meaningless.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from encoders.loading import DEFAULT_TEXT_MODEL, DEFAULT_WHISPER_MODEL
from fusion import checkpoint as checkpoints
from fusion.media.decoding import DEFAULT_FPS
from fusion.model import FusionConfig, FusionModel
from fusion.serving.predictor import Predictor

# stages in pipeline order; a cross-attention checkpoint runs the CNNs and fusion, an experts bundle
# (the default model) the Whisper states and the experts
STAGES = (
    "decode",
    "vad",
    "log_mel",
    "whisper",
    "whisper_states",
    "bert",
    "face_detection",
    "face_cnn",
    "audio_cnn",
    "fusion",
    "experts",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: a randomly initialised fusion model)")
    parser.add_argument("--repeats", type=int, default=5, help="timed predictions after one warm-up (default 5)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or _random_checkpoint(scratch)
        start = time.perf_counter()
        predictor = Predictor(checkpoint, device=args.device)
        load_s = time.perf_counter() - start
        predictor.predict(args.file)  # warm-up
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = predictor.predict(args.file)
            runs.append(result.timings | {"total": time.perf_counter() - start})

    print(f"file: {args.file} ({result.duration:.2f} s, modalities {', '.join(result.summary['modalities'])})")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {predictor.device}; "
        f"torch {torch.__version__}"
    )
    print(f"checkpoint: {'random weights (timing only)' if not args.checkpoint else args.checkpoint}")
    print(f"model loading (once per process): {load_s:.2f} s")
    print(f"median of {args.repeats} predictions after a warm-up:")
    print(f"| {'stage':<15} | {'seconds':>8} |")
    print(f"|{'-' * 17}|{'-' * 10}|")
    for stage in (*[s for s in STAGES if any(s in run for run in runs)], "total"):
        seconds = statistics.median(run.get(stage, 0.0) for run in runs)
        print(f"| {stage:<15} | {seconds:8.4f} |")
    total = statistics.median(run["total"] for run in runs)
    print(f"real-time factor (total / duration): {total / result.duration:.3f}")


def _random_checkpoint(folder: str) -> str:
    """A checkpoint of the default architecture with random weights, for timing when no trained one exists."""
    torch.manual_seed(0)
    model = FusionModel(FusionConfig())
    names = checkpoints.EncoderNames(whisper=DEFAULT_WHISPER_MODEL, text=DEFAULT_TEXT_MODEL)
    return str(checkpoints.save(checkpoints.Checkpoint(model, names, fps=DEFAULT_FPS), folder))


if __name__ == "__main__":
    main()
