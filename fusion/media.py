"""Decode a recording's audio and sampled video frames in one pass over the container, with PyAV."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from math import floor

import av
import numpy as np

from fusion.errors import MediaError

AUDIO_SAMPLE_RATE = 16_000  # Hz, what Whisper and the log-mel front end expect
DEFAULT_FPS = 5.0  # video frames sampled per second of recording
MIN_COVERAGE = 0.9  # fraction of a declared duration that must decode, below which the file is truncated


@dataclass(frozen=True)
class Media:
    """One recording decoded in a single pass."""

    path: str
    duration: float  # seconds
    audio: np.ndarray | None  # (samples,) float32 mono at AUDIO_SAMPLE_RATE, in [-1, 1]; None: no audio decoded
    frames: np.ndarray | None  # (n_frames, height, width, 3) uint8 BGR (OpenCV order); None: no frame decoded
    frame_times: np.ndarray | None  # (n_frames,) float64 seconds, each sampled frame's real presentation time

    @property
    def has_audio(self) -> bool:
        """True only if at least one sample was decoded."""
        return self.audio is not None

    @property
    def has_video(self) -> bool:
        """True only if at least one frame was decoded."""
        return self.frames is not None


class _FrameSampler:
    """Keeps the first frame at or after each target time k / fps, by the frames' real timestamps."""

    def __init__(self, stream: av.VideoStream, fps: float):
        self.time_base = stream.time_base
        # Times are relative to the stream's declared start, so frames before it (edit lists) are skipped.
        self.origin = stream.start_time
        self.fps = Fraction(fps)  # exact, so a frame exactly on a target time is never missed by rounding
        self.next_target = 0  # k of the next target time k / fps
        self.end = Fraction(0)  # seconds after origin that the decoded frames cover
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []

    def add(self, frame: av.VideoFrame) -> None:
        if frame.pts is None:
            raise ValueError("video frame without a timestamp")
        if self.origin is None:
            self.origin = frame.pts
        t = (frame.pts - self.origin) * self.time_base
        self.end = max(self.end, t + (frame.duration or 0) * self.time_base)
        if t * self.fps < self.next_target:
            return
        self.frames.append(frame.to_ndarray(format="bgr24"))
        self.times.append(float(t))
        # Every target up to t is served by this frame: keeping it once avoids duplicates when frames are sparse.
        self.next_target = floor(t * self.fps) + 1


def _check_coverage(path: str, decoded: float, declared: float | None) -> None:
    if declared is not None and decoded < MIN_COVERAGE * declared:
        raise MediaError(path, f"truncated: decoded {decoded:.2f} s of {declared:.2f} s")


def _declared(stream: av.stream.Stream) -> float | None:
    return float(stream.duration * stream.time_base) if stream.duration else None


def decode(path: str | os.PathLike, *, fps: float = DEFAULT_FPS) -> Media:
    """Decode the first audio track (resampled to mono AUDIO_SAMPLE_RATE) and the first video track (sampled at fps).

    Raises MediaError if the file is missing, empty, not a media file, has no audio or video track, is truncated,
    or fails to decode; ValueError if fps <= 0.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(path, "file not found")
    if not os.path.isfile(path):
        raise MediaError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file")

    try:
        container = av.open(path)
    except av.error.FFmpegError as exc:
        raise MediaError(path, f"not a readable media file ({exc})") from exc

    with container:
        audio_stream = next(iter(container.streams.audio), None)
        # Cover art in m4a/flac/mp3 is a one-picture video stream, not a recording of the speaker.
        video_stream = next(
            (s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic), None
        )
        if audio_stream is None and video_stream is None:
            raise MediaError(path, "no audio or video stream")

        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        sampler = None
        if video_stream is not None:
            video_stream.thread_type = "AUTO"
            sampler = _FrameSampler(video_stream, fps)

        streams = [s for s in (audio_stream, video_stream) if s is not None]
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if packet.stream.type == "audio":
                        chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
                    else:
                        sampler.add(frame)
            if audio_stream is not None:
                chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
        # ValueError: PyAV's resampler when a track changes its layout or rate mid-stream, or a frame without pts.
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(path, f"decoding failed: {exc}") from exc

        container_duration = float(container.duration / av.time_base) if container.duration else None
        covered: list[float] = []
        audio = None
        if audio_stream is not None:
            covered.append(sum(len(c) for c in chunks) / AUDIO_SAMPLE_RATE)
            _check_coverage(path, covered[-1], _declared(audio_stream))
            if chunks:
                # AAC and MP3 decoders can overshoot full scale slightly; downstream features assume [-1, 1].
                audio = np.clip(np.concatenate(chunks), -1.0, 1.0)
        frames = frame_times = None
        if sampler is not None:
            covered.append(float(sampler.end))
            _check_coverage(path, covered[-1], _declared(video_stream))
            if sampler.frames:
                frames = np.stack(sampler.frames)
                frame_times = np.array(sampler.times, dtype=np.float64)
        # Streams may legitimately differ in length, but a cut file leaves all of them short of the container's.
        _check_coverage(path, max(covered), container_duration)

    return Media(
        path=path,
        duration=container_duration if container_duration is not None else max(covered),
        audio=audio,
        frames=frames,
        frame_times=frame_times,
    )
