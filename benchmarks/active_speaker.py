"""Active speaker: is the face on camera the one speaking? Measured through fusion's predictor (speakers on) on
interviews built from the shared RAVDESS audio-visual clips, in which the face shown is silent while another actor
asks, then answers, then is silent again while the other actor speaks once more.

    python -m benchmarks.active_speaker --out benchmarks/results/speakers/active_speaker.md

Each recording has three turns:
- a question: the clip's actor's face before they start to speak (the clip's frames up to LEAD_MARGIN_S before the
  voice activity detector's first speech, played forwards and backwards in turn, so the face moves as a still
  listener's does) under the clip's sentence said by another RAVDESS actor of the speech corpus (the next actor
  number, so the other sex; same emotion, normal intensity, first repetition, trimmed as benchmarks/speakers.py
  trims it), from VOICE_START_S into a part TAIL_S longer than it;
- the answer: the clip itself (its actor, on camera, speaks);
- a follow-up: the same silent face under the other actor's other sentence, built as the question.

Every segment of the predicted timeline with a speaker is scored against the truth of the part its middle falls
in: True in the answer, False in the question and the follow-up. Accuracy is over the segments answered (True or
False; None is unknown, counted apart). Built at run time into a temporary folder (video H.264 at 5 fps by PyAV,
sound AAC, muxed by ffmpeg). --speakers 2 gives the predictor the number of speakers; by default it estimates it.
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

from benchmarks.child import describe_machine, write_markdown
from benchmarks.speakers import trimmed
from encoders import SAMPLE_RATE
from encoders.vad import FRAME_SECONDS, SpeechDetector
from fusion.labels import ravdess_fields
from fusion.media.decoding import DEFAULT_FPS, decode
from fusion.serving.predictor import Predictor

LEAD_MARGIN_S = 0.4  # seconds before the first speech where the silent face ends: lips part before the voice starts
VOICE_START_S = 0.5  # where the other actor's voice starts in a silent part
TAIL_S = 0.5  # silence after it
MIN_HEARD_S = 0.3  # seconds of a voice inside a segment for it to be scored: a word or two


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


def _silent_part(face: np.ndarray, voice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The face frames (looped forwards and backwards) and audio of a part in which voice is heard from
    VOICE_START_S, with TAIL_S of silence after it; as many frames as the part lasts at DEFAULT_FPS."""
    n = int(np.ceil((VOICE_START_S + len(voice) / SAMPLE_RATE + TAIL_S) * DEFAULT_FPS))
    audio = np.zeros(int(round(n / DEFAULT_FPS * SAMPLE_RATE)), np.float32)
    first = int(VOICE_START_S * SAMPLE_RATE)
    audio[first : first + len(voice)] = voice
    cycle = np.concatenate([face, face[::-1]])  # forwards and backwards: no jump where the loop restarts
    return cycle[np.arange(n) % len(cycle)], audio


def interview(clip: Path, speech_root: Path, work: Path) -> tuple[Path, int, list[tuple[float, float, bool]]]:
    """A question, the clip as its answer and a follow-up (see the module's docstring). Returns the recording's
    path, the other actor and where each part's voice is heard: (start, end, whether it is the face on camera)."""
    media = decode(clip)
    speech = np.flatnonzero(SpeechDetector()(media.audio))
    onset, offset = speech[0] * FRAME_SECONDS, (speech[-1] + 1) * FRAME_SECONDS  # the clip's first and last speech
    face = media.frames[media.frame_times < onset - LEAD_MARGIN_S]
    fields = ravdess_fields(clip)
    other = 1 + int(fields["actor"]) % 18  # the next actor of the speech corpus (01-18), never the same one
    statements = [fields["statement"], "02" if fields["statement"] == "01" else "01"]
    voices = []
    for statement in statements:
        name = f"03-01-{fields['emotion']}-01-{statement}-01-{other:02d}.flac"
        voices.append(trimmed(speech_root / f"Actor_{other:02d}" / name))
    (question_frames, question), (follow_frames, follow) = (_silent_part(face, voice) for voice in voices)
    answer_start = len(question) / SAMPLE_RATE
    answer_end = answer_start + len(media.frames) / DEFAULT_FPS
    audio = np.zeros(int(round(answer_end * SAMPLE_RATE)), np.float32)
    audio[: len(question)] = question
    audio[len(question) : len(question) + len(media.audio)] = media.audio[: len(audio) - len(question)]
    out = work / f"interview-{clip.stem}.mp4"
    write_recording(
        np.concatenate([question_frames, media.frames, follow_frames]), np.concatenate([audio, follow]), out
    )
    voiced = [
        (VOICE_START_S, VOICE_START_S + len(voices[0]) / SAMPLE_RATE, False),
        (answer_start + onset, answer_start + min(offset, answer_end - answer_start), True),
        (answer_end + VOICE_START_S, answer_end + VOICE_START_S + len(voices[1]) / SAMPLE_RATE, False),
    ]
    return out, other, voiced


def truth(start: float, end: float, voiced: list[tuple[float, float, bool]]) -> bool | None:
    """Whether the voice heard longest in (start, end) is the face's on camera; None where no voice is heard for
    MIN_HEARD_S (a pause: no one speaks, so there is nothing to score)."""
    heard, shown = max((max(0.0, min(end, b) - max(start, a)), shown) for a, b, shown in voiced)
    return shown if heard >= MIN_HEARD_S else None


def recording_interval(rows: list[dict], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the accuracy over rows, resampling whole recordings (their segments are not
    independent: they share a face and a pair of voices)."""
    if not rows:
        return float("nan"), float("nan")
    names = sorted({r["recording"] for r in rows})
    right = {n: [r["answer"] is r["truth"] for r in rows if r["recording"] == n] for n in names}
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(draws):
        drawn = [x for i in rng.integers(0, len(names), len(names)) for x in right[names[i]]]
        accuracies.append(np.mean(drawn))
    return float(np.percentile(accuracies, 2.5)), float(np.percentile(accuracies, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default="../shared/data/av-clips/ravdess")
    parser.add_argument("--speech", default="../shared/data/ravdess-speech-16k")
    parser.add_argument("--out", required=True, help="markdown file")
    parser.add_argument(
        "--speakers", type=int, help="the number of speakers given to the predictor (default: estimated)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    predictor = Predictor(speakers=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for clip in sorted(Path(args.clips).glob("*.mp4")):
            built, other, voiced = interview(clip, Path(args.speech), Path(work))
            prediction = predictor.predict(built, n_speakers=args.speakers)
            for segment in prediction.timeline.itertuples(index=False):
                rows.append(
                    {
                        "recording": f"{clip.stem} (with actor {other:02d})",
                        "start": segment.start,
                        "end": segment.end,
                        "speaker": segment.speaker,
                        "truth": truth(segment.start, segment.end, voiced),
                        "answer": segment.on_camera_speaking,
                    }
                )
    lines = [
        "# Active speaker: is the face on camera the one speaking?",
        "",
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.active_speaker', *sys.argv[1:]])}`  ",
        f"Machine: {describe_machine()}; {time.perf_counter() - started:.0f} s in all.",
        "",
        f"Speakers: {'given: ' + str(args.speakers) if args.speakers else 'estimated'}.",
        "",
        "| truth | segments | answered | right |",
        "|---|---|---|---|",
    ]
    for truth_value in (True, False):
        mine = [r for r in rows if r["truth"] is truth_value]
        known = [r for r in mine if r["answer"] is not None]
        right = sum(r["answer"] is truth_value for r in known)
        name = "speaking (the answer: the clip)" if truth_value else "listening (question, follow-up: another actor)"
        lines.append(f"| {name} | {len(mine)} | {len(known)} | {right} ({100 * right / max(len(known), 1):.0f}%) |")
    pauses = [r for r in rows if r["truth"] is None]
    answered = sum(r["answer"] is not None for r in pauses)
    lines.append(f"| no one speaks (a pause: not scored) | {len(pauses)} | {answered} | - |")
    scored = [r for r in rows if r["truth"] is not None]
    known = [r for r in scored if r["answer"] is not None]
    accuracy = np.mean([r["answer"] is r["truth"] for r in known]) if known else float("nan")
    strict = np.mean([r["answer"] is r["truth"] for r in scored]) if scored else float("nan")
    low, high = recording_interval(known)
    lines += [
        "",
        f"Active-speaker accuracy over the {len(known)} answered segments with speech (the face is visible in every"
        f" frame): **{100 * accuracy:.1f}%** (target 85%; 95% interval {100 * low:.0f}-{100 * high:.0f}%, bootstrap"
        f" over the {len({r['recording'] for r in known})} recordings); {100 * strict:.1f}% with the"
        f" {len(scored) - len(known)} unknown ones counted wrong.",
        "",
        "| recording | segment s | speaker | truth | answer |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['recording']} | {r['start']:.2f}-{r['end']:.2f} | {r['speaker']} | {r['truth']} | {r['answer']} |"
        for r in rows
    ]
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
