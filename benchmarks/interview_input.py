"""A realistic long benchmark input: an interview of two synthetic voices saying varied English sentences, with
pauses and turn-taking, over the looped video of the shared clips; the true transcript and speaker turns beside it.

    python -m benchmarks.interview_input --minutes 10 --out ../cache/interview/10min

writes 10min.mp4 (the RAVDESS clips' H.264 video copied in a loop, the dialogue as AAC) and 10min.json (every
sentence: speaker, start, end, text). Sentences are MELD training lines (varied, conversational) without digits
(a spoken number has more than one right spelling) and of 4 to 30 words, drawn without repeats; espeak-ng (the
Debian package) speaks them in two voices that differ in accent, pitch and rate. A turn is 1 to 3 sentences, 0.25
to 0.6 s apart; turns are 0.5 to 1.5 s apart; a quiet noise floor (-60 dBFS) keeps the pauses from being digital
silence. The same seed gives the same recording.

What it is not: emotional (espeak-ng reads flatly) or a real room. It is for speed, memory, word error rate and
speaker turns, where benchmarks/long_input.py's copies of two RAVDESS sentences repeat what no interview does.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

from benchmarks.long_input import copy_packets
from encoders import SAMPLE_RATE

# The two speakers: espeak-ng voice, words per minute, pitch (0-99)
VOICES = {"A": ("en-us+m3", 165, 40), "B": ("en-gb+f3", 175, 65)}
SENTENCE_PAUSE_S = (0.25, 0.6)
TURN_PAUSE_S = (0.5, 1.5)
NOISE_DBFS = -60.0
MIN_WORDS, MAX_WORDS = 4, 30


@dataclass
class Line:
    speaker: str
    start: float
    end: float
    text: str


def sentences(meld_csv: Path, seed: int) -> list[str]:
    """MELD training lines fit to be read aloud, shuffled."""
    with open(meld_csv, newline="", encoding="utf-8") as f:
        rows = [_clean(r["Utterance"]) for r in csv.DictReader(f)]
    unique = sorted({r for r in rows if MIN_WORDS <= len(r.split()) <= MAX_WORDS and not re.search(r"\d", r)})
    np.random.default_rng(seed).shuffle(unique)
    return unique


def _clean(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2014", ", ").replace("\u2026", "...").replace("\x92", "'").replace("\x85", "...")
    return " ".join(text.encode("ascii", "ignore").decode().split())


def speak(text: str, speaker: str) -> np.ndarray:
    """espeak-ng's reading of text in the speaker's voice, 16 kHz float32."""
    voice, rate, pitch = VOICES[speaker]
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate_in = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    return resample_poly(samples, SAMPLE_RATE, rate_in).astype(np.float32)


def dialogue(seconds: float, meld_csv: Path, seed: int) -> tuple[np.ndarray, list[Line]]:
    """At least `seconds` of two speakers taking turns; the audio and every sentence's times."""
    rng = np.random.default_rng(seed)
    pieces, lines, cursor = [], [], 0.0
    texts = iter(sentences(meld_csv, seed))
    for speaker in itertools.cycle(VOICES):
        if cursor >= seconds:
            break
        for i in range(int(rng.integers(1, 4))):
            pause = rng.uniform(*(SENTENCE_PAUSE_S if i else TURN_PAUSE_S))
            pieces.append(np.zeros(round(pause * SAMPLE_RATE), np.float32))
            cursor += pause
            text = next(texts)
            audio = _trim(speak(text, speaker))
            pieces.append(audio)
            lines.append(Line(speaker, round(cursor, 3), round(cursor + len(audio) / SAMPLE_RATE, 3), text))
            cursor += len(audio) / SAMPLE_RATE
    audio = np.concatenate(pieces)
    audio += rng.normal(0, 10 ** (NOISE_DBFS / 20), len(audio)).astype(np.float32)
    return np.clip(audio, -1, 1), lines


def _trim(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """espeak-ng's own leading and trailing silence removed, so that a line's times are its speech."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio


def write(audio: np.ndarray, clips: list[Path], out: Path) -> None:
    """An mp4 of the clips' video packets copied in a loop (no re-encoding) and the audio as AAC."""
    seconds = len(audio) / SAMPLE_RATE
    with av.open(os.fspath(clips[0])) as first, av.open(os.fspath(out), "w") as output:
        video = output.add_stream_from_template(first.streams.video[0])
        sound = output.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        offset, written = 0.0, 0  # seconds of video, samples of audio so far
        for clip in itertools.cycle(clips):
            if offset >= seconds:
                break
            with av.open(os.fspath(clip)) as source:
                offset += copy_packets(source, output, {"video": video}, offset)
            end = min(len(audio), round(offset * SAMPLE_RATE))
            for packet in _encode(sound, audio[written:end], written):
                output.mux(packet)
            written = end
        for packet in _encode(sound, audio[written:], written) + list(sound.encode(None)):
            output.mux(packet)


def _encode(stream, samples: np.ndarray, first_sample: int) -> list:
    packets = []
    for start in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = first_sample + start
        packets += stream.encode(frame)
    return packets


def write_wav(path: Path, audio: np.ndarray) -> None:
    """16 kHz mono float audio as a 16-bit PCM WAV file."""
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audio-only", action="store_true", help="write OUT.wav instead of a video")
    parser.add_argument("--out", required=True, help="path without suffix: OUT.mp4 (or .wav) and OUT.json")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    shared, out = Path(args.shared), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    audio, lines = dialogue(args.minutes * 60, shared / "data/meld-text/train_sent_emo.csv", args.seed)
    if args.audio_only:
        media = out.with_suffix(".wav")
        write_wav(media, audio)
    else:
        media = out.with_suffix(".mp4")
        write(audio, sorted((shared / "data/av-clips/ravdess").glob("*.mp4")), media)
    truth = {"media": media.name, "seconds": len(audio) / SAMPLE_RATE, "seed": args.seed, "voices": VOICES}
    truth["lines"] = [asdict(line) for line in lines]
    out.with_suffix(".json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {media} ({len(audio) / SAMPLE_RATE:.0f} s, {len(lines)} sentences) and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
