"""Peak RSS of the whole process tree of `fusion score` on long recordings, and its curve over time.

    python -m benchmarks.memory_tree --clips ../shared/data/av-clips/ravdess --minutes 10 60 \
        --out benchmarks/results/memory_tree

For each length: a recording built from the clips (benchmarks/long_input.py: real speech and a real face
throughout), scored by `fusion score FILE --out scores.jsonl --quiet` as a user runs it; the RSS of the scoring
process and all its children (the decoding process) summed, sampled every SAMPLE_S seconds. The table gives the
peak, the peak of each process (the models' process; the decoding process) and the RSS at each tenth of the run;
results.json keeps every sample.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.child import describe_machine, run_sampled, write_results
from benchmarks.long_input import concatenate

SAMPLE_S = 1.0


def measure(path: Path, folder: Path) -> dict:
    command = [sys.executable, "-m", "fusion.cli", "score", str(path), "--out", str(folder / "s.jsonl"), "--quiet"]
    return run_sampled(command, SAMPLE_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", required=True)
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    clips = sorted(Path(args.clips).glob("*.mp4"))
    report = {"command": " ".join(["python -m benchmarks.memory_tree", *sys.argv[1:]]), "machine": describe_machine()}
    report["runs"] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for minutes in args.minutes:
            path = Path(scratch) / f"interview-{minutes:g}min.mp4"
            concatenate(clips, path, seconds=60 * minutes)
            report["runs"][f"{minutes:g}"] = measure(path, Path(scratch))
            path.unlink()
    report["wall_seconds"] = time.perf_counter() - started
    write_results(report, Path(args.out), markdown)


def markdown(report: dict) -> str:
    lines = [
        "# Peak RSS of the whole process tree of `fusion score` (scoring process + decoding process)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min.",
        "",
        "| recording | scoring wall s | peak GB | models' process, peak GB | decoding process, peak GB "
        "| GB at each tenth of the run |",
        "|---|---|---|---|---|---|",
    ]
    for minutes, run in report["runs"].items():
        samples = [sample for sample in run["samples"] if sample[1] > 0]  # not the instant the processes exited
        tenths = [samples[min(len(samples) - 1, round(k * (len(samples) - 1) / 10))][1] for k in range(1, 11)]
        curve = ", ".join(f"{gb:.2f}" for gb in tenths)
        own = max(p[1] for p in run["parts"])
        children = max(p[2] for p in run["parts"])
        lines.append(
            f"| {minutes} min | {run['seconds']:.0f} | {run['peak_gb']:.2f} | {own:.2f} | {children:.2f} | {curve} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
