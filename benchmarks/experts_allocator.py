"""The experts' seconds on a long recording under each of glibc's allocator settings that prediction could use.

    python -m benchmarks.experts_allocator --recording ../cache/interview/10min.mp4 \
        --out benchmarks/results/experts_allocator

The recording's features are extracted once (Predictor.extractor.stream); then, in a fresh process per setting, its
chunks are scored by the shipped bundle's experts, fusion and attribution as Predictor.predict scores them, and the
process's user and system CPU seconds and minor page faults over that stage are read from getrusage, with its peak
RSS above the features (sampled). Settings: "shipped" (encoders.memory.bound_allocator: every block of 256 KiB or
more a mapping of its own, which keeps the memory of long recordings bounded, except inside the voice and face
experts' passes, which reuse their freed blocks: encoders.memory.reusing_freed_blocks), "bound" (the bound
everywhere, as before the reuse) and "glibc" (glibc's own dynamic thresholds everywhere).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.child import describe_machine, write_results

SETTINGS = ("shipped", "bound", "glibc")
SAMPLE_S = 0.005  # seconds between RSS samples


def measure(recording: str, setting: str) -> dict:
    """In this process: the experts' wall and CPU seconds on the recording under one setting."""
    import contextlib
    import threading

    import fusion.experts.bundle as bundle_module
    import fusion.serving.predictor as predictor_module
    from alignment import make_segments
    from encoders.memory import release_free_memory

    if setting == "glibc":
        predictor_module.bound_allocator = lambda: None
    if setting in ("glibc", "bound"):
        bundle_module.reusing_freed_blocks = contextlib.nullcontext
    predictor = predictor_module.Predictor()
    pieces = list(predictor.extractor.stream(recording, chunk_s=predictor.chunk_s, background=True, timings={}))
    predictor.extractor.close()  # the decoding process: not running while the experts are timed
    bundle, statistics = predictor.bundle, []
    release_free_memory()
    base, peak, done = _rss(), [0], threading.Event()
    sampler = threading.Thread(target=_sample, args=(peak, done))
    sampler.start()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for piece in pieces:
        release_free_memory()
        timeline = make_segments(piece.utterances, piece.duration, start=piece.start, mode="utterance")
        experts = bundle.segment_probabilities(piece, timeline, statistics)
        bundle.attribution(experts, bundle.fuse(experts))
    after = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "setting": setting,
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "page_faults": after.ru_minflt - before.ru_minflt,
        "peak_above_features_mb": (peak[0] - base) / 1e6,
        "chunks": len(pieces),
    }


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _sample(peak: list, done) -> None:
    while not done.wait(SAMPLE_S):
        peak[0] = max(peak[0], _rss())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recording", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--one", choices=SETTINGS, help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.recording, args.one)))
        return
    started = time.perf_counter()
    report = {
        "command": " ".join(["python -m benchmarks.experts_allocator", *sys.argv[1:]]),
        "machine": describe_machine(),
        "runs": [],
    }
    for setting in SETTINGS:
        command = [sys.executable, "-m", "benchmarks.experts_allocator", "--recording", args.recording]
        command += ["--out", args.out, "--one", setting]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        report["runs"].append(json.loads(out.strip().splitlines()[-1]))
    report["wall_seconds"] = time.perf_counter() - started
    write_results(report, Path(args.out), markdown)


def markdown(report: dict) -> str:
    lines = [
        "# The experts' seconds under glibc's allocator settings",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min.",
        "",
        "| setting | experts, wall s | user CPU s | system CPU s | minor page faults | peak over features, MB |",
        "|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        lines.append(
            f"| {run['setting']} | {run['wall_s']:.1f} | {run['user_s']:.1f} | {run['system_s']:.1f}"
            f" | {run['page_faults']:,} | {run['peak_above_features_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
