"""Voice activity detectors compared on real speech and on noise: Silero VAD (what fusion uses, its ONNX file on
onnxruntime), the same model's TorchScript file on torch (what fusion used before), and webrtcvad.

    python -m benchmarks.vad --out benchmarks/results/vad.md

Speech: 20 RAVDESS takes (every sixth of actors 01-02) one after another, about 74 s; each take is a sentence
with silence around it, so a good detector calls roughly half of it speech. Noise: 30 s of white noise (standard
deviation 0.1) and 30 s of dithered silence (1e-4), where any frame called speech is wrong. Seconds are per 10
minutes of audio, one thread. webrtcvad comes from PyPI's webrtcvad-wheels (the [bench] extra). Also: the largest
difference between the two Silero files' speech probabilities, and the memory (RSS) of a fresh process that imports
the decoding process's modules and loads each Silero file, which is what the detector costs the decoding process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.child import describe_machine, write_markdown
from encoders.vad import FRAME_SAMPLES, SPEECH_THRESHOLD, SpeechDetector
from fusion.media.decoding import decode

WEBRTC_FRAME = 480  # samples: webrtcvad takes 10, 20 or 30 ms frames; 30 ms at 16 kHz
WEBRTC_MODE = 3  # its most aggressive setting: the fewest non-speech frames called speech


def silero(audio: np.ndarray) -> tuple[np.ndarray, float]:
    detector = SpeechDetector()
    detector.reset()
    started = time.perf_counter()
    speech = detector(audio)
    return speech, time.perf_counter() - started


def silero_torchscript(audio: np.ndarray) -> tuple[np.ndarray, float]:
    """Speech probabilities of the TorchScript model frame by frame, as silero-vad's own utilities feed it."""
    from silero_vad import load_silero_vad

    model = load_silero_vad()
    frames = torch.from_numpy(audio[: len(audio) // FRAME_SAMPLES * FRAME_SAMPLES].copy()).view(-1, FRAME_SAMPLES)
    started = time.perf_counter()
    with torch.inference_mode():
        probabilities = np.array([model(frame, 16_000).item() for frame in frames])
    return probabilities, time.perf_counter() - started


LOADERS = {  # what a fresh process runs: the decoding process's modules, then one Silero file loaded
    "ONNX on onnxruntime": "from encoders.vad import SpeechDetector; SpeechDetector()",
    "TorchScript on torch": "from silero_vad import load_silero_vad; load_silero_vad()",
}


def loaded_mb(code: str) -> float:
    """RSS (MB) of a fresh Python process after the decoding process's imports and code."""
    import subprocess

    script = f"import psutil; from fusion.media import decode_worker; {code}; print(psutil.Process().memory_info().rss)"
    return int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout) / 1e6


def webrtc(audio: np.ndarray) -> tuple[np.ndarray, float]:
    import webrtcvad

    vad = webrtcvad.Vad(WEBRTC_MODE)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    started = time.perf_counter()
    step = 2 * WEBRTC_FRAME  # bytes
    speech = np.array([vad.is_speech(pcm[i : i + step], 16_000) for i in range(0, len(pcm) - step + 1, step)])
    return speech, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech", default="../shared/data/ravdess-speech-16k")
    parser.add_argument("--out", default="benchmarks/results/vad.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    files = sorted(Path(args.speech).glob("Actor_0[12]/*"))[::6][:40]
    rng = np.random.default_rng(0)
    inputs = {
        f"RAVDESS speech ({len(files)} takes)": np.concatenate([decode(f).audio for f in files]),
        "white noise (sd 0.1)": (rng.standard_normal(30 * 16_000) * 0.1).astype(np.float32),
        "dithered silence (sd 1e-4)": (rng.standard_normal(30 * 16_000) * 1e-4).astype(np.float32),
    }
    lines = [
        "# Voice activity detectors",
        "",
        f"Command: `python -m benchmarks.vad {' '.join(sys.argv[1:])}`  ",
        f"Machine: {describe_machine()}  ",
        "",
        f"Silero VAD: 32 ms frames ({FRAME_SAMPLES} samples), threshold 0.5. webrtcvad: 30 ms frames, mode "
        f"{WEBRTC_MODE}. Share of frames called speech, and seconds per 10 minutes of audio.",
        "",
        "| input | seconds | Silero: speech | webrtcvad: speech | Silero s / 10 min | Silero TorchScript s / 10 min "
        "| webrtcvad s / 10 min | ONNX against TorchScript: max abs probability difference, frames that differ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, audio in inputs.items():
        seconds = len(audio) / 16_000
        (s_speech, s_time), (w_speech, w_time) = silero(audio), webrtc(audio)
        detector = SpeechDetector()
        ours, (theirs, t_time) = detector.probabilities(audio), silero_torchscript(audio)
        differ = int(((ours > SPEECH_THRESHOLD) != (theirs > SPEECH_THRESHOLD)).sum())
        lines.append(
            f"| {name} | {seconds:.0f} | {100 * s_speech.mean():.1f}% | {100 * w_speech.mean():.1f}% | "
            f"{s_time / seconds * 600:.1f} | {t_time / seconds * 600:.1f} | {w_time / seconds * 600:.2f} | "
            f"{np.abs(ours - theirs).max():.1e}, {differ} of {len(ours)} |"
        )
    lines += [
        "",
        "| Silero file loaded in a fresh process with the decoding process's modules | RSS, MB |",
        "|---|---|",
    ]
    lines += [f"| {name} | {loaded_mb(code):.0f} |" for name, code in LOADERS.items()]
    lines += ["", f"Wall time: {time.perf_counter() - started:.0f} s"]
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
