"""Build a long recording from short real clips, without re-encoding: the clips' packets are copied one after
another, with their timestamps shifted, into one mp4.

    python benchmarks/long_input.py ../shared/data/av-clips/ravdess --minutes 10 --out /tmp/interview-10min.mp4

The clips must share their codecs and parameters (the RAVDESS clips do: H.264 video, AAC audio). The result is
a stand-in for a long interview: real speech and a real face throughout, for speed and memory measurements.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import av


def concatenate(clips: Sequence[str | os.PathLike], out: str | os.PathLike, *, seconds: float) -> float:
    """Repeat clips in order until at least seconds of recording are written to out; returns its duration (s)."""
    if not clips:
        raise ValueError("no clips to concatenate")
    with av.open(os.fspath(clips[0])) as first, av.open(os.fspath(out), "w") as output:
        templates = [s for s in first.streams if s.type in ("audio", "video")]
        streams = {s.type: output.add_stream_from_template(s) for s in templates}
        offset = 0.0  # seconds of recording written so far
        for clip in itertools.cycle(clips):
            if offset >= seconds:
                break
            with av.open(os.fspath(clip)) as source:
                offset += copy_packets(source, output, streams, offset)
    return offset


def copies(clips: Sequence[str | os.PathLike], seconds: float) -> int:
    """How many clips concatenate(clips, ..., seconds=seconds) copies, in turn: each clip's duration is measured the
    way concatenate() measures it."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        durations = [concatenate([clip], os.path.join(scratch, "one.mp4"), seconds=1e-3) for clip in clips]
    total, count = 0.0, 0
    while total < seconds:
        total, count = total + durations[count % len(durations)], count + 1
    return count


def copy_packets(source: av.container.InputContainer, output, streams: dict, offset: float) -> float:
    """Copy one clip's packets of the stream types in streams ({"audio": output stream, "video": ...}), shifted by
    offset seconds; returns the clip's duration (s) in those streams."""
    inputs = [s for s in source.streams if s.type in streams]
    end = 0.0
    for packet in source.demux(*inputs):
        if packet.dts is None:  # the demuxer's end-of-stream flush packet
            continue
        stream = packet.stream
        shift = round(offset / stream.time_base)
        start = stream.start_time or 0
        packet.pts = packet.pts - start + shift if packet.pts is not None else None
        packet.dts = packet.dts - start + shift
        end = max(end, float((packet.pts or packet.dts) + (packet.duration or 0) - shift) * stream.time_base)
        packet.stream = streams[stream.type]
        output.mux(packet)
    return end


def joined_audio(folder: str | os.PathLike, minutes: float):
    """The decoded 16 kHz mono audio of the speech files under folder (searched recursively, in name order), joined
    end to end and cut to the given length: a long stretch of real speech for timing the audio path."""
    import numpy as np

    from encoders import SAMPLE_RATE
    from fusion.media.decoding import decode

    needed = int(minutes * 60 * SAMPLE_RATE)
    pieces, total = [], 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.suffix in {".flac", ".wav", ".mp4"}):
        pieces.append(decode(path).audio)
        total += len(pieces[-1])
        if total >= needed:
            break
    return np.concatenate(pieces)[:needed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", help="folder of clips (*.mp4), concatenated in name order")
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    clips = sorted(Path(args.clips).glob("*.mp4"))
    duration = concatenate(clips, args.out, seconds=args.minutes * 60)
    print(f"wrote {args.out}: {duration:.1f} s from {len(clips)} clips")


if __name__ == "__main__":
    main()
