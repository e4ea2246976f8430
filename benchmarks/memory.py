"""Memory of the models process on a long recording: the encoders' batch sizes, and what each chunk leaves behind.

    python benchmarks/memory.py --clips ../shared/data/av-clips/ravdess --minutes 25 --out benchmarks/results/memory.md

1. Batch sizes. The shipped checkpoint's audio CNN over 40 log-mel chunks of 30 s and its face CNN over 3,000
   face crops, at several batch sizes, each size in its own process after one warm-up pass of a single item:
   seconds, and the peak RSS above the RSS before the first timed pass (the activations). The inputs are real:
   the clips' log-mel frames and main-face crops, repeated to that count.
2. Chunk by chunk. ``Predictor.predict`` on a recording built from the clips (copied one after another, not kept),
   in its own process, three ways: without releasing freed memory and with the former batch sizes (audio 8,
   face 256); releasing freed memory after each chunk (:func:`fusion.serving.memory.release_free_memory`) with those
   batch sizes; and as shipped. For each chunk: the RSS right after its Whisper and BERT, and the highest RSS
   sampled (every RSS_SAMPLE_S) while it was processed.

The decoding process is not counted here; benchmarks/speed.py measures both processes together.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine, run_python  # noqa: E402
from benchmarks.long_input import concatenate  # noqa: E402

AUDIO_CHUNKS = 40  # 30 s log-mel chunks per audio CNN measurement: 20 minutes of audio
FACE_CROPS = 3000  # crops per face CNN measurement: 10 minutes at 5 sampled frames per second
AUDIO_BATCHES = (1, 2, 4, 8)
FACE_BATCHES = (32, 64, 128, 256)
# the batch sizes before this benchmark, on every device
FORMER_BATCHES = {"AUDIO_CHUNK_BATCH": {"cpu": 8, "cuda": 8}, "FACE_BATCH": {"cpu": 256, "cuda": 256}}
RSS_SAMPLE_S = 0.05

# Runs in a child process; prints JSON as its last line.
_BATCH = """
import json, re, time
from pathlib import Path
import numpy as np, psutil, torch
from alignment import Stream, pad_streams
from encoders.face import face_pixels
from fusion import checkpoint
from fusion.model import AUDIO_CHUNK_FRAMES
from fusion.serving.predictor import DEFAULT_CHECKPOINT

model = checkpoint.load(DEFAULT_CHECKPOINT, device="cpu").model
inputs = np.load({inputs!r})
mel = torch.from_numpy(inputs["mel"])
times = torch.arange(AUDIO_CHUNK_FRAMES).float()
mask = torch.ones(AUDIO_CHUNK_FRAMES, dtype=torch.bool)
audio = [Stream(chunk, times, mask) for chunk in mel.split(AUDIO_CHUNK_FRAMES)]
pixels = face_pixels(inputs["crops"])
with torch.inference_mode():  # a first small pass, so that one-time set-up counts in neither figure
    model.encode_audio(pad_streams(audio[:1])) if {encoder!r} == "audio" else model.face_encoder(pixels[:1])
before = psutil.Process().memory_info().rss
Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS (VmHWM) starts again from here
start = time.perf_counter()
with torch.inference_mode():
    if {encoder!r} == "audio":
        for first in range(0, len(audio), {batch}):
            model.encode_audio(pad_streams(audio[first : first + {batch}]))
    else:
        for first in range(0, len(pixels), {batch}):
            model.face_encoder(pixels[first : first + {batch}])
seconds = time.perf_counter() - start
status = Path("/proc/self/status").read_text()
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
print(json.dumps({{"seconds": seconds, "activations_gb": (peak - before) / 1024**3}}))
"""

_CHUNKS = """
import json, resource, threading, time
import psutil
import fusion.model
import fusion.serving.predictor
from fusion.serving.predictor import Predictor

if not {release}:
    fusion.serving.predictor.release_free_memory = lambda: None
for name, value in {batches!r}.items():
    setattr(fusion.model, name, value)
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
                    "after_asr_gb": process.memory_info().rss / 1024**3}})
    return features

predictor.extractor.extract_chunk = extract_and_record
start = time.perf_counter()
predictor.predict({path!r})
seconds = time.perf_counter() - start
chunks[-1]["peak_gb"] = highest[0] / 1024**3
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({{"seconds": seconds, "peak_gb": peak, "chunks": chunks}}))
"""

CONDITIONS = {  # name: (release freed memory, batch sizes patched in)
    "before: no release, batches 8 / 256": (False, FORMER_BATCHES),
    "release after each chunk, batches 8 / 256": (True, FORMER_BATCHES),
    "as shipped: release, batches 1 / 32": (True, {}),
}


def encoder_inputs(clips: list[Path], out: Path) -> None:
    """The clips' log-mel frames and main-face crops, repeated to AUDIO_CHUNKS x 30 s and FACE_CROPS, saved to out."""
    from encoders.audio import log_mel
    from encoders.face_detection import FaceDetector, find_all_faces, main_face_crops
    from fusion.media.decoding import decode
    from fusion.model import AUDIO_CHUNK_FRAMES

    detector = FaceDetector()
    mels, crops = [], []
    for clip in clips:
        media = decode(clip)
        mels.append(log_mel(media.audio))
        faces = main_face_crops(find_all_faces(media.frames, detector, times=media.frame_times))
        crops.append(faces.crops[faces.present])
    mel, crops = np.concatenate(mels), np.concatenate(crops)
    frames = AUDIO_CHUNKS * AUDIO_CHUNK_FRAMES
    mel = np.resize(mel, (frames, mel.shape[1]))  # np.resize repeats the rows
    crops = np.resize(crops, (FACE_CROPS, *crops.shape[1:]))
    np.savez(out, mel=mel, crops=crops)


def _markdown(batches: dict, chunked: dict, duration: float, command: str, machine: str) -> str:
    lines = [
        "# Memory of the models process on a long recording",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Inputs: the shared RAVDESS audio-visual clips (see benchmarks/memory.py).",
        "",
        "## Encoder batch sizes",
        "",
        f"Audio CNN over {AUDIO_CHUNKS} log-mel chunks of 30 s, face CNN over {FACE_CROPS:,} face crops; activations",
        "= peak RSS above the RSS before the first timed pass (after a one-item warm-up).",
        "",
        "| encoder | batch | seconds | activations |",
        "|---|---|---|---|",
    ]
    for (encoder, batch), row in batches.items():
        lines.append(f"| {encoder} | {batch} | {row['seconds']:.2f} | {row['activations_gb']:.2f} GB |")
    lines += [
        "",
        f"## Chunk by chunk, {duration / 60:.1f} min recording",
        "",
        "RSS of the models process right after each chunk's Whisper and BERT, and the highest RSS sampled while",
        "the chunk was processed (Whisper, BERT, the CNNs, fusion).",
        "",
    ]
    for name, run in chunked.items():
        lines += [
            f"**{name}**: {run['seconds']:.0f} s, process peak {run['peak_gb']:.2f} GB",
            "",
            "| chunk | after Whisper + BERT | highest |",
            "|---|---|---|",
        ]
        for chunk in run["chunks"]:
            span = f"{chunk['start'] / 60:.1f}-{(chunk['start'] + chunk['duration']) / 60:.1f} min"
            lines.append(f"| {span} | {chunk['after_asr_gb']:.2f} GB | {chunk['peak_gb']:.2f} GB |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", required=True, help="folder of clips to build the inputs from")
    parser.add_argument("--minutes", type=float, default=25, help="length of the recording for the chunk part")
    parser.add_argument("--out", required=True, help="markdown file; a .json with the raw numbers goes beside it")
    args = parser.parse_args()
    clips = sorted(Path(args.clips).glob("*.mp4"))
    machine = describe_machine()
    batches, chunked = {}, {}
    with tempfile.TemporaryDirectory() as work:
        inputs = Path(work) / "inputs.npz"
        encoder_inputs(clips, inputs)
        for encoder, sizes in (("audio", AUDIO_BATCHES), ("face", FACE_BATCHES)):
            for batch in sizes:
                batches[encoder, batch] = run_python(_BATCH.format(inputs=str(inputs), encoder=encoder, batch=batch))
                print(encoder, batch, batches[encoder, batch], flush=True)
        path = Path(work) / f"interview-{args.minutes:g}min.mp4"
        duration = concatenate(clips, path, seconds=args.minutes * 60)
        for name, (release, patched) in CONDITIONS.items():
            code = _CHUNKS.format(release=release, batches=patched, path=str(path), sample_s=RSS_SAMPLE_S)
            chunked[name] = run_python(code)
            print(name, json.dumps(chunked[name]), flush=True)
    command = " ".join(["python", *sys.argv])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_markdown(batches, chunked, duration, command, machine))
    raw = {
        "command": command,
        "machine": machine,
        "duration_s": duration,
        "batches": [{"encoder": e, "batch": b, **row} for (e, b), row in batches.items()],
        "chunks": chunked,
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
