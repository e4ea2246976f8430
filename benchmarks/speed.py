"""Speed and memory of `fusion score` on long recordings, against bare decoding and bare Whisper.

    python benchmarks/speed.py --clips ../shared/data/av-clips/ravdess --minutes 10 60 --compare-background \
        --out benchmarks/results/speed.md

For each length, a recording is built at run time from the real clips (copied one after another, no re-encoding;
it is not kept) and, in the same run, timed three ways, each in its own process so that its peak RSS is its own:

- bare decode: ``ffmpeg -i FILE -f null -`` (every frame and sample decoded, nothing else);
- bare Whisper: ``whisper.transcribe`` of the recording's audio with the same model and options as fusion uses
  (word timestamps, greedy decoding, the same thresholds), model loading and audio extraction not timed;
- fusion: ``fusion score FILE --out ...`` end to end (decode, Whisper, the Whisper states, faces, the experts and
  their fusion, writing the tables).

Real-time factor (RTF) = seconds of processing / seconds of recording. The ratio that matters is
fusion / (bare decode + bare Whisper): what the whole pipeline costs over the two things it cannot avoid.
Needs the ffmpeg binary of imageio-ffmpeg (``pip install -e .[bench]``) or ffmpeg on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine, run_python  # noqa: E402
from benchmarks.long_input import concatenate  # noqa: E402
from encoders.loading import DEFAULT_WHISPER_MODEL, WHISPER_ENV  # noqa: E402

# Runs `code` in a child Python and prints, as the last line, JSON with its result and the peak RSS of the
# grandchild processes it ran (RUSAGE_CHILDREN), or of itself when it ran none.
_PROBE = """
import json, resource, sys, time
{code}
usage = resource.getrusage(resource.RUSAGE_CHILDREN if CHILD else resource.RUSAGE_SELF)
print(json.dumps({{"seconds": SECONDS, "peak_rss_gb": usage.ru_maxrss / 1024**2, **EXTRA}}))
"""

_BARE_DECODE = """
import subprocess
CHILD, EXTRA = True, {{}}
start = time.perf_counter()
subprocess.run([{ffmpeg!r}, "-v", "error", "-i", {path!r}, "-f", "null", "-"], check=True)
SECONDS = time.perf_counter() - start
"""

_BARE_WHISPER = """
import subprocess
import numpy as np
import torch
import whisper
from encoders import text
CHILD = False
raw = subprocess.run([{ffmpeg!r}, "-v", "error", "-i", {path!r}, "-f", "f32le", "-ac", "1", "-ar", "16000", "-"],
                     check=True, capture_output=True).stdout
audio = np.frombuffer(raw, np.float32).copy()
model = whisper.load_model({model!r}, device="cpu")
start = time.perf_counter()
result = model.transcribe(audio, verbose=None, temperature=0.0, condition_on_previous_text=False,
                          word_timestamps=True, no_speech_threshold=text.NO_SPEECH_THRESHOLD,
                          logprob_threshold=text.LOGPROB_THRESHOLD, fp16=False)
SECONDS = time.perf_counter() - start
EXTRA = {{"words": sum(len(s["words"]) for s in result["segments"])}}
"""

# fusion runs as two processes (the models, and the decoding process it starts): their RSS is also sampled
# together, every RSS_SAMPLE_S, for the peak of the sum
_FUSION = """
import subprocess, sys
import psutil
CHILD = True
start = time.perf_counter()
command = [sys.executable, "-m", "fusion.cli", "score", {path!r}, "--out", {out!r}, "--quiet", *{extra!r}]
process = subprocess.Popen(command)
watched, peak_sum = psutil.Process(process.pid), 0
while process.poll() is None:
    try:
        tree = [watched, *watched.children(recursive=True)]
        peak_sum = max(peak_sum, sum(p.memory_info().rss for p in tree))
    except psutil.Error:  # a process ended while being read
        pass
    time.sleep({sample_s})
SECONDS = time.perf_counter() - start
assert process.returncode == 0, process.returncode
EXTRA = {{"peak_rss_all_gb": peak_sum / 1024**3}}
"""
RSS_SAMPLE_S = 0.1

_EXTRACT = """
import time
from fusion.media.features import FeatureExtractor
CHILD = False
extractor = FeatureExtractor()
start = time.perf_counter()
for _ in extractor.stream({path!r}, background={background}):
    pass
SECONDS = time.perf_counter() - start
EXTRA = {{}}
"""


def _probe(code: str) -> dict:
    """Seconds and peak RSS of code, run in a child Python under _PROBE."""
    return run_python(_PROBE.format(code=code))


def _ffmpeg() -> str:
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError:
        raise SystemExit("needs ffmpeg: pip install -e .[bench] (imageio-ffmpeg), or ffmpeg on PATH") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def measure(
    clips: list[Path], minutes: float, work: Path, *, compare_background: bool = False, score_options: tuple = ()
) -> dict:
    """Build a recording of about `minutes` and time bare decode, bare Whisper and fusion score on it; with
    compare_background, also feature extraction with decoding inline and in the decoding process."""
    path = work / f"interview-{minutes:g}min.mp4"
    duration = concatenate(clips, path, seconds=minutes * 60)
    ffmpeg = _ffmpeg()
    model = os.environ.get(WHISPER_ENV, DEFAULT_WHISPER_MODEL)
    row = {"minutes": minutes, "duration_s": duration}
    print(f"{minutes:g} min: bare decode", flush=True)
    row["decode"] = _probe(_BARE_DECODE.format(ffmpeg=ffmpeg, path=str(path)))
    print(f"{minutes:g} min: bare Whisper", flush=True)
    row["whisper"] = _probe(_BARE_WHISPER.format(ffmpeg=ffmpeg, path=str(path), model=model))
    print(f"{minutes:g} min: fusion score", flush=True)
    out = work / f"scores-{minutes:g}.parquet"
    row["fusion"] = _probe(
        _FUSION.format(path=str(path), out=str(out), sample_s=RSS_SAMPLE_S, extra=list(score_options))
    )
    row["fusion_words"] = int(pd.read_parquet(out)["text"].fillna("").str.split().str.len().sum())
    files = pd.read_parquet(work / f"scores-{minutes:g}.files.parquet")
    row["fusion_stages"] = {c: float(files[c].iloc[0]) for c in files.columns if c.startswith("seconds_")}
    row["fusion_segments"] = int(files["segments"].iloc[0])
    if compare_background:
        print(f"{minutes:g} min: feature extraction, decoding inline and in the decoding process", flush=True)
        row["extract"] = {
            mode: _probe(_EXTRACT.format(path=str(path), background=mode == "background"))["seconds"]
            for mode in ("inline", "background")
        }
    path.unlink()
    return row


def _markdown(rows: list[dict], command: str, machine: str) -> str:
    lines = [
        "# Speed and memory of `fusion score` on long recordings",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Inputs: the shared RAVDESS audio-visual clips (1280x720 H.264, AAC) copied one after",
        "another to the length shown, built at run time. Each tool ran in its own process. Peak RSS of bare",
        "Whisper is its process's; of fusion, the largest of its two processes (the models, and the decoding",
        f"process), and the peak of their sum, sampled every {RSS_SAMPLE_S} s.",
        "",
        "| input | bare decode s (RTF) | bare Whisper s (RTF) | fusion score s (RTF) | fusion / (decode + Whisper) |"
        " peak RSS fusion, largest process | peak RSS fusion, both processes | peak RSS bare Whisper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        d = row["duration_s"]
        decode, whisper, fusion = row["decode"], row["whisper"], row["fusion"]
        ratio = fusion["seconds"] / (decode["seconds"] + whisper["seconds"])
        lines.append(
            f"| {d / 60:.1f} min | {decode['seconds']:.0f} ({decode['seconds'] / d:.3f}) "
            f"| {whisper['seconds']:.0f} ({whisper['seconds'] / d:.3f}) "
            f"| {fusion['seconds']:.0f} ({fusion['seconds'] / d:.3f}) | {ratio:.2f} "
            f"| {fusion['peak_rss_gb']:.2f} GB | {fusion['peak_rss_all_gb']:.2f} GB | {whisper['peak_rss_gb']:.2f} GB |"
        )
    lines += [
        "",
        "fusion's seconds per stage (from its per-file summary; decoding and face detection run in the decoding",
        "process, overlapping the others, so the stages add up to more than the total):",
        "",
        "| input | " + " | ".join(c.removeprefix("seconds_") for c in rows[0]["fusion_stages"]) + " | segments |",
        "|---|" + "---|" * (len(rows[0]["fusion_stages"]) + 1),
    ]
    for row in rows:
        stages = " | ".join(f"{v:.1f}" for v in row["fusion_stages"].values())
        lines.append(f"| {row['duration_s'] / 60:.1f} min | {stages} | {row['fusion_segments']} |")
    lines += [
        "",
        "fusion score's time includes starting Python and loading every model (a few seconds).",
        "",
        "Words transcribed: "
        + "; ".join(
            f"{row['duration_s'] / 60:.1f} min: bare Whisper {row['whisper']['words']}, fusion {row['fusion_words']}"
            for row in rows
        )
        + ". The clips say one six-word sentence each, over and over (6 words per copy: the truth is in",
        "benchmarks/results/repeated_speech.md), so Whisper's 30 s windows are repetitive; fusion keeps such a window",
        "unless it is also decoded with little confidence (encoders.asr.keep_window), and transcribes in chunks cut",
        "at pauses, with voice activity detection.",
    ]
    compared = [row for row in rows if "extract" in row]
    if compared:
        lines += [
            "",
            "Feature extraction alone (decode, faces, Whisper; models loaded first), with decoding and face detection",
            "run inline, in turn with the models, or in the decoding process one chunk ahead:",
            "",
            "| input | inline s | decoding process s |",
            "|---|---|---|",
        ]
        for row in compared:
            inline, background = row["extract"]["inline"], row["extract"]["background"]
            lines.append(f"| {row['duration_s'] / 60:.1f} min | {inline:.0f} | {background:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", required=True, help="folder of clips to build the long inputs from")
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--out", required=True, help="markdown file; a .json with the raw numbers goes beside it")
    parser.add_argument(
        "--compare-background",
        action="store_true",
        help="on the shortest input, also time feature extraction with decoding inline vs in the decoding process",
    )
    parser.add_argument("--speakers", action="store_true", help="fusion score with --speakers (who speaks when)")
    args = parser.parse_args()
    clips = sorted(Path(args.clips).glob("*.mp4"))
    machine = describe_machine()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for minutes in args.minutes:
            started = time.perf_counter()
            compare = args.compare_background and minutes == min(args.minutes)
            options = ("--speakers",) if args.speakers else ()
            rows.append(measure(clips, minutes, Path(work), compare_background=compare, score_options=options))
            print(json.dumps(rows[-1]), f"({time.perf_counter() - started:.0f} s)", flush=True)
    command = " ".join(["python", *sys.argv])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_markdown(rows, command, machine))
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine, "runs": rows}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
