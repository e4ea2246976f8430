"""`fusion score` of one long recording with several bundles, end to end, in one run: what a new model costs the
user in total.

    python benchmarks/score_bundles.py --clips ../shared/data/av-clips/ravdess --minutes 10 \
        --bundle OLD_BUNDLE --bundle fusion/checkpoints/default --repeats 2 \
        --out benchmarks/results/default_model/score_bundles.md

The recording is built at run time from the real clips (benchmarks/long_input.py; not kept). Each run is a whole
`fusion score FILE --checkpoint BUNDLE --quiet` process (Python start, model loading, decoding, Whisper, the
states, faces, the experts, fusion, the tables); the bundles take turns, so that a slow spell of the machine falls
on both. Median wall seconds per bundle.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine, write_markdown  # noqa: E402
from benchmarks.long_input import concatenate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", required=True, help="folder of clips (*.mp4), concatenated in name order")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--bundle", action="append", required=True, help="a bundle folder; repeat to compare")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {b: [] for b in args.bundle}
    with tempfile.TemporaryDirectory() as scratch:
        recording = Path(scratch) / "long.mp4"
        duration = concatenate(sorted(Path(args.clips).glob("*.mp4")), recording, seconds=args.minutes * 60)
        for repeat in range(args.repeats):
            for bundle in args.bundle:
                table = Path(scratch) / f"scores-{repeat}-{len(seconds[bundle])}.csv"
                command = ["fusion", "score", str(recording), "--checkpoint", bundle, "--quiet", "--out", str(table)]
                began = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                seconds[bundle].append(time.perf_counter() - began)
                print(bundle, f"{seconds[bundle][-1]:.1f} s", flush=True)
    first = statistics.median(seconds[args.bundle[0]])
    lines = [
        "# `fusion score` end to end, by bundle",
        "",
        f"Command: `python {shlex.join(sys.argv)}`  ",
        f"Machine: {describe_machine()}.  ",
        f"Input: {duration / 60:.1f} min built from the clips in {args.clips}; {args.repeats} runs per bundle, taking"
        " turns; median wall seconds.",
        "",
        f"| bundle | runs (s) | median s | against {args.bundle[0]} |",
        "|---|---|---|---|",
    ]
    for bundle, runs in seconds.items():
        median = statistics.median(runs)
        lines.append(f"| {bundle} | {', '.join(f'{s:.1f}' for s in runs)} | {median:.1f} | {median / first:.2f}x |")
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
