"""The first run: `fusion --help`, and a cold `fusion predict` of a short clip, each a fresh process, timed whole.

    python -m benchmarks.cold_start --clip ../shared/data/av-clips/ravdess/01-01-01-01-01-01-01.mp4 --repeats 3 \
        --out benchmarks/results/cold_start

Wall time and peak RSS of the whole process tree (the command and its children: the decoding process when one is
started), sampled every 20 ms. Three runs each: `fusion --help`; `fusion predict CLIP` as it ships (a short file is
read in the same process; CTranslate2 speech recognition); and the same prediction with `--asr openai-whisper`, for
the comparison. On an idle machine: nothing else runs meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks.child import describe_machine, run_sampled, write_results


def measure(command: list[str]) -> dict:
    """Wall seconds and peak RSS (MB) of the process tree of command, sampled every 20 ms."""
    run = run_sampled(command, 0.02)
    return {"seconds": run["seconds"], "peak_mb": 1000 * run["peak_gb"], "stderr_lines": run["stderr_lines"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    runs = {
        "fusion --help": [sys.executable, "-m", "fusion.cli", "--help"],
        "fusion predict CLIP": [sys.executable, "-m", "fusion.cli", "predict", args.clip],
        "fusion predict CLIP --asr openai-whisper": [
            *(sys.executable, "-m", "fusion.cli", "predict", args.clip, "--asr", "openai-whisper")
        ],
    }
    report = {
        "command": " ".join(["python -m benchmarks.cold_start", *sys.argv[1:]]),
        "machine": describe_machine(),
        "runs": {name: [measure(command) for _ in range(args.repeats)] for name, command in runs.items()},
    }
    report["wall_seconds"] = time.perf_counter() - started
    write_results(report, Path(args.out), markdown)


def markdown(report: dict) -> str:
    lines = [
        "# Cold start: each command a fresh process",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall time {report['wall_seconds']:.0f} s.",
        "",
        "| command | wall s (median, min-max) | peak RSS of the process tree, MB (median) | stderr lines |",
        "|---|---|---|---|",
    ]
    for name, runs in report["runs"].items():
        seconds = [r["seconds"] for r in runs]
        lines.append(
            f"| `{name}` | {statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) "
            f"| {statistics.median(r['peak_mb'] for r in runs):.0f} | {max(r['stderr_lines'] for r in runs)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
