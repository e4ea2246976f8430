"""Active speaker (alignment.active_speaker): is the face on camera the one speaking? Measured on the shared RAVDESS
audio-visual clips and on recordings built from them in which the face shown is silent while another actor speaks.

    python -m benchmarks.active_speaker --out benchmarks/results/speakers/active_speaker.md

- speaking: each of the 11 clips (the actor on camera says the sentence).
- listening: the same actor's face before they start to speak (the clip's frames up to 0.1 s before the voice
  activity detector's first speech, played forwards and backwards in turn, so the face moves as a still listener's
  does), under the same sentence said by another RAVDESS actor of the speech corpus (same emotion, normal intensity,
  first repetition, trimmed as benchmarks/speakers.py trims it), from 0.5 s into a part 1 s longer than it.

Each built recording is the listening part followed by the clip, as in an interview: the face on camera first
listens, then answers.

Each recording goes through fusion.media.features (5 face frames a second, voice activity) and Whisper's
utterances (alignment.make_segments); every segment with words is scored against the truth of its recording.
Built at run time into a temporary folder (video H.264 at 5 fps by PyAV, sound AAC, muxed by ffmpeg).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import soundfile

from alignment import make_segments
from alignment.active_speaker import mouth_motion, on_camera_speaking
from benchmarks.child import describe_machine
from benchmarks.speakers import trimmed
from encoders import SAMPLE_RATE
from encoders.vad import FRAME_SECONDS, speech_at
from fusion.labels import ravdess_fields
from fusion.media.decoding import DEFAULT_FPS, decode
from fusion.media.features import FeatureExtractor

LEAD_MARGIN_S = 0.4  # seconds before the first speech where the silent face ends: lips part before the voice starts
VOICE_START_S = 0.5  # where the other actor's voice starts in a listening recording
TAIL_S = 0.5  # silence after it


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_recording(frames: np.ndarray, audio: np.ndarray, path: Path) -> None:
    """(n, h, w, 3) BGR frames at DEFAULT_FPS and (samples,) 16 kHz audio as an mp4 at path."""
    video = path.with_suffix(".video.mp4")
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=int(DEFAULT_FPS))
        stream.height, stream.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
        stream.pix_fmt = "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image[: stream.height, : stream.width], format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    sound = path.with_suffix(".wav")
    soundfile.write(sound, audio, SAMPLE_RATE)
    subprocess.run(
        [_ffmpeg(), "-v", "error", "-y", "-i", str(video), "-i", str(sound), "-c:v", "copy", "-c:a", "aac", str(path)],
        check=True,
    )


def interview(clip: Path, speech_root: Path, extractor: FeatureExtractor, work: Path) -> tuple[Path, int, float]:
    """A recording in two parts: clip's actor silent on camera while another actor says the same sentence, then
    the clip itself (its actor speaking). Returns its path, the other actor and where the clip starts (seconds)."""
    media = decode(clip)
    features = extractor.extract(media)
    onset = np.flatnonzero(features.speech)[0] * FRAME_SECONDS  # the first voice activity frame with speech
    lead = media.frames[media.frame_times < onset - LEAD_MARGIN_S]
    fields = ravdess_fields(clip)
    other = 1 + int(fields["actor"]) % 18  # the next actor of the speech corpus (01-18), never the same one
    name = f"03-01-{fields['emotion']}-01-{fields['statement']}-01-{other:02d}.flac"
    voice = trimmed(speech_root / f"Actor_{other:02d}" / name)
    n = int(np.ceil((VOICE_START_S + len(voice) / SAMPLE_RATE + TAIL_S) * DEFAULT_FPS))
    listen_s = n / DEFAULT_FPS
    audio = np.zeros(int(round(listen_s * SAMPLE_RATE)), np.float32)
    first = int(VOICE_START_S * SAMPLE_RATE)
    audio[first : first + len(voice)] = voice
    cycle = np.concatenate([lead, lead[::-1]])  # forwards and backwards: no jump where the loop restarts
    frames = np.concatenate([cycle[np.arange(n) % len(cycle)], media.frames])
    out = work / f"interview-{clip.stem}.mp4"
    write_recording(frames, np.concatenate([audio, media.audio]), out)
    return out, other, listen_s


def score(path: Path, extractor: FeatureExtractor) -> list[tuple[float, float, bool | None]]:
    """(start, end, the detector's answer) of every segment with words of a recording."""
    features = extractor.extract(decode(path))
    segments = [(s.start, s.end) for s in make_segments(features.utterances, features.duration) if s.text.strip()]
    motion = mouth_motion(features.face_crops, features.face_present)
    speaking = speech_at(features.face_times, features.speech, 0.0)
    answers = on_camera_speaking(segments, features.face_times, motion, speaking)
    return [(start, end, answer) for (start, end), answer in zip(segments, answers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default="../shared/data/av-clips/ravdess")
    parser.add_argument("--speech", default="../shared/data/ravdess-speech-16k")
    parser.add_argument("--out", required=True, help="markdown file")
    args = parser.parse_args()
    started = time.perf_counter()
    extractor = FeatureExtractor(embed_words=False, voice_prints=True)  # voice_prints: runs the VAD on whole files
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for clip in sorted(Path(args.clips).glob("*.mp4")):
            built, other, clip_start = interview(clip, Path(args.speech), extractor, Path(work))
            for start, end, answer in score(built, extractor):
                truth = (start + end) / 2 >= clip_start  # the clip's part: its actor, on camera, speaks
                rows.append(
                    {
                        "recording": f"{clip.stem} (listening to actor {other:02d})",
                        "start": start,
                        "end": end,
                        "truth": truth,
                        "answer": answer,
                    }
                )
    lines = [
        "# Active speaker: is the face on camera the one speaking?",
        "",
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.active_speaker', *sys.argv[1:]])}`  ",
        f"Machine: {describe_machine()}; {time.perf_counter() - started:.0f} s in all.",
        "",
        "| truth | segments with words | answered | right |",
        "|---|---|---|---|",
    ]
    for truth in (True, False):
        mine = [r for r in rows if r["truth"] is truth]
        known = [r for r in mine if r["answer"] is not None]
        right = sum(r["answer"] is truth for r in known)
        name = "speaking (the clip's actor)" if truth else "listening (another actor's voice)"
        lines.append(f"| {name} | {len(mine)} | {len(known)} | {right} ({100 * right / max(len(known), 1):.0f}%) |")
    known = [r for r in rows if r["answer"] is not None]
    accuracy = np.mean([r["answer"] is r["truth"] for r in known]) if known else float("nan")
    lines += [
        "",
        f"Active-speaker accuracy over answered segments: {100 * accuracy:.1f}% (target 85%).",
        "",
        "| recording | segment s | truth | answer |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['recording']} | {r['start']:.2f}-{r['end']:.2f} | {r['truth']} | {r['answer']} |" for r in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
