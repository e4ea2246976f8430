"""What the voice path costs per minute of speech, for several bundles' voice experts in one run: the Whisper
encoder states and the voice expert, as fusion.predict runs them.

    python benchmarks/voice_cost.py --clips ../shared/data/ravdess-speech-16k --minutes 10 \
        --bundle OLD_BUNDLE --bundle fusion/checkpoints/default --out benchmarks/results/voice_expert/voice_cost.md

The audio is the shared speech clips, decoded and joined end to end to the given length, cut into 30 s chunks as
`fusion score` streams a long recording. Per chunk: the log-mel (encoders.audio), the states of the voice's Whisper
encoder (encoders.whisper_models.load_states_encoder, only the blocks it reads, 30 s windows, bf16 as served), and
the voice expert on 4 s segments through fusion.experts.bundle.ExpertBundle.segment_probabilities (voice context,
batching, and for an expert with speaker normalisation the recording's statistics added up chunk by chunk). Each
bundle's states encoder is the Whisper model its voice was trained on. Median over --repeats passes, after one
warm-up chunk; torch threads as OMP_NUM_THREADS sets them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alignment.timeline import Segment  # noqa: E402
from benchmarks.child import describe_machine, write_markdown  # noqa: E402
from benchmarks.long_input import joined_audio  # noqa: E402
from encoders import SAMPLE_RATE  # noqa: E402
from encoders.audio import FRAME_SECONDS, log_mel  # noqa: E402
from encoders.loading import DEFAULT_WHISPER_MODEL  # noqa: E402
from encoders.whisper_models import load_states_encoder  # noqa: E402
from encoders.whisper_states import WhisperStates  # noqa: E402
from fusion.experts.bundle import ExpertBundle  # noqa: E402
from fusion.media.features import RecordingFeatures  # noqa: E402

CHUNK_S = 30.0
SEGMENT_S = 4.0


def voice_pass(bundle: ExpertBundle, states: WhisperStates, audio: np.ndarray) -> tuple[float, float]:
    """(seconds of states, seconds of the expert) for the whole audio, chunk by chunk."""
    statistics: list = []
    states_s = expert_s = 0.0
    chunk = int(CHUNK_S * SAMPLE_RATE)
    for first in range(0, len(audio), chunk):
        piece_audio = audio[first : first + chunk]
        start = first / SAMPLE_RATE
        began = time.perf_counter()
        encoded, times = states(piece_audio)
        states_s += time.perf_counter() - began
        began = time.perf_counter()
        duration = len(piece_audio) / SAMPLE_RATE
        piece = RecordingFeatures(
            path="joined",
            duration=duration,
            mel=log_mel(piece_audio),
            utterances=[],
            face_crops=None,
            face_times=None,
            face_present=None,
            start=start,
            whisper_states=encoded,
            whisper_times=times + start,
        )
        edges = np.arange(start, start + duration, SEGMENT_S)
        segments = [Segment(float(a), float(min(a + SEGMENT_S, start + duration))) for a in edges]
        bundle.segment_probabilities(piece, segments, statistics)
        expert_s += time.perf_counter() - began
    return states_s, expert_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", required=True, help="folder of speech files (searched recursively)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--bundle", action="append", required=True, help="a bundle folder; repeat to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()
    audio = joined_audio(args.clips, args.minutes)
    minutes = len(audio) / SAMPLE_RATE / 60
    rows = []
    for folder in args.bundle:
        bundle = ExpertBundle.load(folder, experts=["voice"], device="cpu")
        config = json.loads((Path(folder) / "voice" / "config.json").read_text())
        whisper = config.get("whisper_model", DEFAULT_WHISPER_MODEL)
        block = max(bundle.voice.config.whisper_blocks)
        states = WhisperStates(load_states_encoder(whisper, "cpu", blocks=block), blocks=block, bf16=True)
        voice_pass(bundle, states, audio[: int(CHUNK_S * SAMPLE_RATE)])  # warm-up
        passes = [voice_pass(bundle, states, audio) for _ in range(args.repeats)]
        states_s = float(np.median([p[0] for p in passes]))
        expert_s = float(np.median([p[1] for p in passes]))
        rows.append((folder, whisper, block, bundle.voice.config.speaker_normalisation, states_s, expert_s))
        print(rows[-1], flush=True)
    base = (rows[0][4] + rows[0][5]) / minutes
    lines = [
        "# The voice path per minute of speech",
        "",
        f"Command: `python {shlex.join(sys.argv)}`  ",
        f"Machine: {describe_machine()}.  ",
        f"{minutes:.1f} min of joined RAVDESS speech in {CHUNK_S:g} s chunks, {SEGMENT_S:g} s segments; median of"
        f" {args.repeats} passes; seconds per minute of speech (log-mel frames {FRAME_SECONDS * 1000:g} ms).",
        "",
        "| bundle | states encoder | block | speaker normalisation | states s/min | expert s/min | voice path s/min"
        f" | against {rows[0][0]} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for folder, whisper, block, normalised, states_s, expert_s in rows:
        total = (states_s + expert_s) / minutes
        lines.append(
            f"| {folder} | {whisper} | {block} | {'yes' if normalised else 'no'} | {states_s / minutes:.3f}"
            f" | {expert_s / minutes:.3f} | {total:.3f} | {total / base:.2f}x |"
        )
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
