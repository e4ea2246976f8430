"""What the Whisper encoder states cost at inference: seconds to encode a long recording's audio in 30 s windows.

    python benchmarks/whisper_states_cost.py --clips ../shared/data/ravdess-speech-16k --minutes 10 --blocks 3 \
        --out benchmarks/results/voice_expert/states_cost.md

The audio is the shared RAVDESS speech clips, decoded and joined end to end to the given length. The states are
computed as fusion.media.features.FeatureExtractor computes them (encoders.whisper_states: the first `blocks` encoder
blocks, 30 s windows, no padding), after one warm-up window; the machine's torch threads as set by OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine, write_markdown  # noqa: E402
from benchmarks.long_input import joined_audio  # noqa: E402
from encoders import SAMPLE_RATE
from encoders.asr import Transcriber  # noqa: E402
from encoders.whisper_states import WINDOW_SAMPLES, WhisperStates  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", required=True, help="folder of speech files (searched recursively)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()

    audio = joined_audio(args.clips, args.minutes)
    states = WhisperStates(Transcriber().model, blocks=args.blocks)
    states(audio[:WINDOW_SAMPLES])  # warm-up
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        encoded, _ = states(audio)
        seconds.append(time.perf_counter() - started)
    duration = len(audio) / SAMPLE_RATE
    median = float(np.median(seconds))
    lines = [
        "# Whisper encoder states at inference",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        f"Machine: {describe_machine()}.",
        "",
        f"{duration / 60:.1f} min of speech, {args.blocks} of tiny.en's 4 encoder blocks, 30 s windows:"
        f" {encoded.shape[0]} states; median of {args.repeats} runs {median:.2f} s"
        f" (real-time factor {median / duration:.4f}); runs: {', '.join(f'{s:.2f}' for s in seconds)} s.",
    ]
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
