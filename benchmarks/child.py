"""What the benchmarks share: running code in a fresh Python, naming the machine, writing results.json and .md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch


def run_python(code: str) -> dict:
    """Run code in a child Python, in its own process so that its memory is its own; returns the JSON object it
    prints as its last line. Raises RuntimeError with the child's stderr if it fails."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_sampled(command: list[str], every_s: float) -> dict:
    """Run command, sampling the RSS of its whole process tree (it and its children) every every_s seconds ->
    {"seconds", "samples": [(seconds, GB), ...], "peak_gb", "stderr_lines", "parts": [(seconds, GB of the process
    itself, GB of its children), ...]}. RuntimeError with its stderr if it fails."""
    import subprocess
    import time

    import psutil

    started = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples, parts = [], []
    while process.poll() is None:
        try:
            own = process.memory_info().rss
            children = sum(p.memory_info().rss for p in process.children(recursive=True))
            if own + children:  # 0 once the processes have exited
                now = time.perf_counter() - started
                samples.append((now, (own + children) / 1e9))
                parts.append((now, own / 1e9, children / 1e9))
        except psutil.Error:  # a process ended between listing and reading it
            pass
        time.sleep(every_s)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode()
    if process.returncode != 0:
        raise RuntimeError(stderr)
    peak = max((gb for _, gb in samples), default=0.0)
    return {
        "seconds": seconds,
        "samples": samples,
        "peak_gb": peak,
        "stderr_lines": len(stderr.splitlines()),
        "parts": parts,
    }


def describe_machine() -> str:
    """This machine in words, for the results files: processor, cores, GPU, torch version and threads."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"
        f" ({torch.get_num_threads()} threads)"
    )


def write_markdown(lines: list[str], out: str | os.PathLike) -> None:
    """lines as the markdown file out (its folder created), and printed."""
    text = "\n".join(lines) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text, end="")


def write_results(report: dict, out: Path, markdown: Callable[[dict], str]) -> None:
    """report as out/results.json and markdown(report) as out/results.md (printed too); out is created."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "results.md").write_text(text)
    print(text)
