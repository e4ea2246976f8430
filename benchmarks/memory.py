"""Memory of the models process on a long recording, chunk by chunk: what each chunk leaves behind.

    python benchmarks/memory.py --clips ../shared/data/av-clips/ravdess --minutes 25 \
        --out benchmarks/results/default_model/memory.md

``Predictor.predict`` on a recording built from the clips (copied one after another, not kept), in its own process,
two ways: without releasing freed memory, and as shipped, releasing it after each chunk
(:func:`encoders.memory.release_free_memory`). For each chunk: the RSS right after its feature extraction
(Whisper, the Whisper states, face crops), and the highest RSS sampled (every RSS_SAMPLE_S) while it was processed.

The decoding process is not counted here; benchmarks/speed.py measures both processes together. The committed
benchmarks/results/memory.md was made by an earlier version of this script with the retired cross-attention model
(git tag ``cross-attention-family``), which also timed that model's audio and face CNNs at several batch sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine, run_python  # noqa: E402
from benchmarks.long_input import concatenate  # noqa: E402

RSS_SAMPLE_S = 0.05

# Runs in a child process; prints JSON as its last line.
_CHUNKS = """
import json, resource, threading, time
import psutil
import fusion.serving.predictor
from fusion.serving.predictor import Predictor

if not {release}:
    fusion.serving.predictor.release_free_memory = lambda: None
predictor = Predictor()
process = psutil.Process()
chunks, highest = [], [0]

def sample():
    while True:
        highest[0] = max(highest[0], process.memory_info().rss)
        time.sleep({sample_s})

threading.Thread(target=sample, daemon=True).start()
extract = predictor.extractor.extract_chunk

def extract_and_record(chunk, timings=None):
    if chunks:
        chunks[-1]["peak_gb"] = highest[0] / 1024**3  # the previous chunk's whole processing is done
    highest[0] = 0
    features = extract(chunk, timings=timings)
    chunks.append({{"start": chunk.start, "duration": chunk.duration,
                    "after_features_gb": process.memory_info().rss / 1024**3}})
    return features

predictor.extractor.extract_chunk = extract_and_record
start = time.perf_counter()
predictor.predict({path!r})
seconds = time.perf_counter() - start
chunks[-1]["peak_gb"] = highest[0] / 1024**3
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({{"seconds": seconds, "peak_gb": peak, "chunks": chunks}}))
"""

CONDITIONS = {  # name: release freed memory after each chunk
    "without release": False,
    "as shipped: release after each chunk": True,
}


def _markdown(chunked: dict, duration: float, command: str, machine: str) -> str:
    lines = [
        "# Memory of the models process on a long recording",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Inputs: the shared RAVDESS audio-visual clips (see benchmarks/memory.py).",
        "",
        f"## Chunk by chunk, {duration / 60:.1f} min recording",
        "",
        "RSS of the models process right after each chunk's feature extraction (Whisper, the Whisper states, face",
        "crops), and the highest RSS sampled while the chunk was processed (extraction and the experts).",
        "",
    ]
    for name, run in chunked.items():
        lines += [
            f"**{name}**: {run['seconds']:.0f} s, process peak {run['peak_gb']:.2f} GB",
            "",
            "| chunk | after feature extraction | highest |",
            "|---|---|---|",
        ]
        for chunk in run["chunks"]:
            span = f"{chunk['start'] / 60:.1f}-{(chunk['start'] + chunk['duration']) / 60:.1f} min"
            lines.append(f"| {span} | {chunk['after_features_gb']:.2f} GB | {chunk['peak_gb']:.2f} GB |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", required=True, help="folder of clips to build the recording from")
    parser.add_argument("--minutes", type=float, default=25, help="length of the recording")
    parser.add_argument("--out", required=True, help="markdown file; a .json with the raw numbers goes beside it")
    args = parser.parse_args()
    clips = sorted(Path(args.clips).glob("*.mp4"))
    machine = describe_machine()
    chunked = {}
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / f"interview-{args.minutes:g}min.mp4"
        duration = concatenate(clips, path, seconds=args.minutes * 60)
        for name, release in CONDITIONS.items():
            code = _CHUNKS.format(release=release, path=str(path), sample_s=RSS_SAMPLE_S)
            chunked[name] = run_python(code)
            print(name, json.dumps(chunked[name]), flush=True)
    command = " ".join(["python", *sys.argv])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_markdown(chunked, duration, command, machine))
    raw = {"command": command, "machine": machine, "duration_s": duration, "chunks": chunked}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
