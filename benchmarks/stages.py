"""Time each stage of prediction on one file: decode, voice activity, log-mel, Whisper, the Whisper states, face
detection and the experts.

    python benchmarks/stages.py ../shared/data/av-clips/ravdess/01-01-01-01-01-01-01.mp4 --repeats 5

Models are loaded once before timing and the first prediction is a warm-up. Without --checkpoint the model is
$FUSION_CHECKPOINT, else the shipped one. The text expert runs its own BERT inside the "experts" stage.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fusion.serving.predictor import Predictor

# stages in pipeline order, as Prediction.timings names them
STAGES = (
    "decode",
    "vad",
    "log_mel",
    "whisper",
    "whisper_states",
    "face_detection",
    "voice_prints",
    "experts",
    "diarization",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--checkpoint", help="experts bundle folder (default: $FUSION_CHECKPOINT or the shipped model)")
    parser.add_argument("--repeats", type=int, default=5, help="timed predictions after one warm-up (default 5)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    start = time.perf_counter()
    predictor = Predictor(args.checkpoint, device=args.device)
    load_s = time.perf_counter() - start
    predictor.predict(args.file)  # warm-up
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = predictor.predict(args.file)
        runs.append(result.timings | {"total": time.perf_counter() - start})

    print(f"file: {args.file} ({result.duration:.2f} s, modalities {', '.join(result.summary.modalities)})")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {predictor.device}; "
        f"torch {torch.__version__}"
    )
    print(f"checkpoint: {args.checkpoint or 'the default ($FUSION_CHECKPOINT or the shipped model)'}")
    print(f"model loading (once per process): {load_s:.2f} s")
    print(f"median of {args.repeats} predictions after a warm-up:")
    print(f"| {'stage':<15} | {'seconds':>8} |")
    print(f"|{'-' * 17}|{'-' * 10}|")
    for stage in (*[s for s in STAGES if any(s in run for run in runs)], "total"):
        seconds = statistics.median(run.get(stage, 0.0) for run in runs)
        print(f"| {stage:<15} | {seconds:8.4f} |")
    total = statistics.median(run["total"] for run in runs)
    print(f"real-time factor (total / duration): {total / result.duration:.3f}")


if __name__ == "__main__":
    main()
