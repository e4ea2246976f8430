"""Decode a recording's audio and sampled video frames in one pass over the container, with PyAV.

:class:`MediaReader` streams a file as audio blocks and sampled frames, in demux order and in bounded memory, so a
long interview is never held whole; :func:`decode` collects a short file into one :class:`Media`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from math import floor

import av
import numpy as np

from encoders import SAMPLE_RATE
from fusion.errors import MediaError

DEFAULT_FPS = 5.0  # video frames sampled per second of recording
MIN_COVERAGE = 0.9  # fraction of a declared duration that must decode, below which the file is truncated
# Packets that fail to decode are skipped (audio: replaced by silence of their length, so later audio keeps its
# time) and their spans reported; a file with more than this share of its duration damaged is rejected instead.
MAX_DAMAGED_SHARE = 0.5
# Frames that no other frame references (most B-frames) are not decoded when the video has at least this many
# frames per sampled one: they are never needed to decode the rest, and the frames left (at least the I- and
# P-frames, a third or more of a 30 fps stream) are still denser than the samples.
SKIP_NONREF_MIN_RATIO = 4.0
# FFmpeg formats that open a file but are no recording: still images (image2, png_pipe, jpeg_pipe, ...: every
# "*_pipe" image format) and text shown as a picture (tty)
NOT_RECORDINGS = frozenset({"image2", "tty"})


@dataclass(frozen=True)
class Media:
    """One recording decoded in a single pass."""

    path: str
    duration: float  # seconds
    audio: np.ndarray | None  # (samples,) float32 mono at SAMPLE_RATE, in [-1, 1]; None: no audio decoded
    frames: np.ndarray | None  # (n_frames, height, width, 3) uint8 BGR (OpenCV order); None: no frame decoded
    frame_times: np.ndarray | None  # (n_frames,) float64 seconds, each sampled frame's real presentation time
    damaged: tuple[tuple[float, float], ...] = ()  # (start, end) seconds of packets that failed to decode, skipped

    @property
    def has_audio(self) -> bool:
        """True only if at least one sample was decoded."""
        return self.audio is not None

    @property
    def has_video(self) -> bool:
        """True only if at least one frame was decoded."""
        return self.frames is not None


@dataclass(frozen=True)
class AudioBlock:
    """Decoded audio that follows the previous block without a gap."""

    samples: np.ndarray  # (n,) float32 mono at SAMPLE_RATE, in [-1, 1]


@dataclass(frozen=True)
class SampledFrame:
    """One video frame kept by the frame sampler."""

    time: float  # seconds from the start of the video stream, the frame's real presentation time
    image: np.ndarray  # (height, width, 3) uint8 BGR


class _FrameSampler:
    """Keeps the first frame at or after each target time k / fps, by the frames' real timestamps."""

    def __init__(self, stream: av.VideoStream, fps: float):
        self.time_base = stream.time_base
        # Times are relative to the stream's declared start, so frames before it (edit lists) are skipped.
        self.origin = stream.start_time
        self.fps = Fraction(fps)  # exact, so a frame exactly on a target time is never missed by rounding
        self.next_target = 0  # k of the next target time k / fps
        self.end = Fraction(0)  # seconds after origin that the decoded frames cover

    def sample(self, frame: av.VideoFrame) -> SampledFrame | None:
        if frame.pts is None:
            raise ValueError("video frame without a timestamp")
        if self.origin is None:
            self.origin = frame.pts
        t = (frame.pts - self.origin) * self.time_base
        self.end = max(self.end, t + (frame.duration or 0) * self.time_base)
        if t * self.fps < self.next_target:
            return None
        # Every target up to t is served by this frame: keeping it once avoids duplicates when frames are sparse.
        self.next_target = floor(t * self.fps) + 1
        return SampledFrame(float(t), upright(frame.to_ndarray(format="bgr24"), frame.rotation))


def upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """The image as it is meant to be shown: a phone stores a portrait video's pixels sideways with a display
    rotation (degrees counter-clockwise, as FFmpeg's display matrix gives it). Rounded to a quarter turn."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def _check_coverage(path: str, decoded: float, declared: float | None) -> None:
    if declared is not None and decoded < MIN_COVERAGE * declared:
        raise MediaError(path, f"truncated: decoded {decoded:.2f} s of {declared:.2f} s")


def _declared(stream: av.stream.Stream) -> float | None:
    return float(stream.duration * stream.time_base) if stream.duration else None


class MediaReader:
    """Streams one recording: the first audio track (resampled to mono SAMPLE_RATE) and the first video track
    (sampled at fps), in one demux pass.

        with MediaReader("interview.mp4") as reader:
            for item in reader:  # AudioBlock or SampledFrame, in the order the container interleaves them
                ...
        reader.duration  # seconds, once iteration has finished

    Raises MediaError, on opening, if the file is missing, empty, not a media file or has no audio or video track;
    while iterating, if the container cannot be read on; at the end of iteration, if it is truncated or more than
    MAX_DAMAGED_SHARE of it is damaged. ValueError if fps <= 0. A packet that fails to decode is skipped (see
    MAX_DAMAGED_SHARE) and its span listed in ``damaged``.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float = DEFAULT_FPS, threads: int | None = None):
        """threads: video decoding threads; None lets FFmpeg choose (about one per core)."""
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = os.fspath(path)
        try:
            os.stat(self.path)
        except FileNotFoundError:
            raise MediaError(self.path, "file not found") from None
        except OSError as error:  # a symbolic link loop, no permission to a folder on the way, ...
            raise MediaError(self.path, f"cannot open it: {error.strerror or error}") from None
        if not os.path.isfile(self.path):
            raise MediaError(self.path, "not a regular file")
        if os.path.getsize(self.path) == 0:
            raise MediaError(self.path, "empty file")
        try:
            self._container = av.open(self.path)
        except av.error.FFmpegError as exc:
            raise MediaError(self.path, f"not a readable media file ({exc})") from exc

        container = self._container
        if container.format.name in NOT_RECORDINGS or container.format.name.endswith("_pipe"):
            container.close()
            raise MediaError(self.path, f"not a recording: FFmpeg reads it as {container.format.long_name}")
        self._audio_stream = next(iter(container.streams.audio), None)
        # Cover art in m4a/flac/mp3 is a one-picture video stream, not a recording of the speaker.
        self._video_stream = next(
            (s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic), None
        )
        if self._audio_stream is None and self._video_stream is None:
            container.close()
            raise MediaError(self.path, "no audio or video stream")
        self.has_audio_track = self._audio_stream is not None
        self.has_video_track = self._video_stream is not None
        # seconds, as the container declares it; None when it does not
        self.declared_duration = float(container.duration / av.time_base) if container.duration else None
        self.fps = fps
        self.threads = threads
        self.duration: float | None = None  # set once iteration finishes and the file proved complete
        self.damaged: list[tuple[float, float]] = []  # (start, end) seconds of skipped packets, merged, in order

    def __enter__(self) -> MediaReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[AudioBlock | SampledFrame]:
        streams = [s for s in (self._audio_stream, self._video_stream) if s is not None]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        sampler = None
        if self._video_stream is not None:
            self._video_stream.thread_type = "AUTO"
            if self.threads is not None:
                self._video_stream.codec_context.thread_count = self.threads
            rate = self._video_stream.average_rate
            if rate is not None and rate >= SKIP_NONREF_MIN_RATIO * self.fps:
                self._video_stream.codec_context.skip_frame = "NONREF"
            sampler = _FrameSampler(self._video_stream, self.fps)
        samples = 0
        try:
            for packet in self._container.demux(*streams):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:  # a damaged packet: skipped, its span reported
                    seconds = self._skip(packet)
                    if packet.stream.type == "audio" and seconds > 0:
                        silence = np.zeros(round(seconds * SAMPLE_RATE), np.float32)
                        samples += len(silence)
                        yield AudioBlock(silence)
                    continue
                for frame in frames:
                    if packet.stream.type == "audio":
                        for block in resampler.resample(frame):
                            samples += block.samples
                            yield _audio_block(block)
                    elif (sampled := sampler.sample(frame)) is not None:
                        yield sampled
            if self._audio_stream is not None:
                for block in resampler.resample(None):
                    samples += block.samples
                    yield _audio_block(block)
        # ValueError: PyAV's resampler when a track changes its layout or rate mid-stream, or a frame without pts.
        except (av.error.FFmpegError, ValueError) as exc:
            # A cut file often fails at its cut: say so when too little of it had decoded.
            self._check_complete(samples, sampler)
            raise MediaError(self.path, f"decoding failed: {exc}") from exc
        self.duration = self._check_complete(samples, sampler)
        damaged = sum(end - start for start, end in self.damaged)
        if damaged > MAX_DAMAGED_SHARE * self.duration:
            raise MediaError(self.path, f"damaged: {damaged:.2f} s of {self.duration:.2f} s could not be decoded")

    def _skip(self, packet: av.Packet) -> float:
        """Record a packet that failed to decode; returns its duration (s)."""
        stream = packet.stream
        origin = stream.start_time or 0
        start = float((packet.pts - origin) * stream.time_base) if packet.pts is not None else None
        seconds = float(packet.duration * stream.time_base) if packet.duration else 0.0
        if start is None:  # no timestamp: placed just after the last damaged span, or at 0
            start = self.damaged[-1][1] if self.damaged else 0.0
        end = start + seconds
        if self.damaged and start <= self.damaged[-1][1] + seconds:
            previous = self.damaged.pop()
            start, end = min(previous[0], start), max(previous[1], end)
        self.damaged.append((round(start, 3), round(end, 3)))
        return seconds

    def _check_complete(self, samples: int, sampler: _FrameSampler | None) -> float:
        """Raise MediaError("truncated") if the decoded audio or video falls short, or if nothing decoded at all
        (a text file named .flac: FFmpeg finds a stream, but no sample in it); else the duration (s)."""
        if samples == 0 and (sampler is None or sampler.origin is None):
            raise MediaError(self.path, "nothing in it could be decoded: not a media file, or an empty one")
        covered: list[float] = []
        if self._audio_stream is not None:
            covered.append(samples / SAMPLE_RATE)
            _check_coverage(self.path, covered[-1], _declared(self._audio_stream))
        if sampler is not None:
            covered.append(float(sampler.end))
            _check_coverage(self.path, covered[-1], _declared(self._video_stream))
        # Streams may legitimately differ in length, but a cut file leaves all of them short of the container's.
        _check_coverage(self.path, max(covered), self.declared_duration)
        return self.declared_duration if self.declared_duration is not None else max(covered)


def _audio_block(frame: av.AudioFrame) -> AudioBlock:
    # AAC and MP3 decoders can overshoot full scale slightly; downstream features assume [-1, 1].
    return AudioBlock(np.clip(frame.to_ndarray()[0], -1.0, 1.0))


def is_short(path: str | os.PathLike, seconds: float) -> bool:
    """Whether the recording declares a duration of at most `seconds` (False when it declares none, or cannot be
    opened: the decoding then says why)."""
    try:
        with av.open(os.fspath(path)) as container:
            return container.duration is not None and container.duration / av.time_base <= seconds
    except (av.error.FFmpegError, OSError):
        return False


def check_readable(path: str | os.PathLike) -> None:
    """Raise MediaError now, before any model loads, if the file cannot be a recording: missing, not a file,
    empty, not a media file FFmpeg opens, a still image, or without audio and video streams."""
    MediaReader(path).close()


def decode(path: str | os.PathLike, *, fps: float = DEFAULT_FPS) -> Media:
    """Decode a whole recording into memory (for short files: a long video's frames would not fit; see MediaReader).

    Raises MediaError if the file is missing, empty, not a media file, has no audio or video track, is truncated,
    or fails to decode; ValueError if fps <= 0.
    """
    audio: list[np.ndarray] = []
    frames: list[SampledFrame] = []
    with MediaReader(path, fps=fps) as reader:
        for item in reader:
            if isinstance(item, AudioBlock):
                audio.append(item.samples)
            else:
                frames.append(item)
    return Media(
        path=reader.path,
        duration=reader.duration,
        audio=np.concatenate(audio) if audio else None,
        frames=np.stack([f.image for f in frames]) if frames else None,
        frame_times=np.array([f.time for f in frames], dtype=np.float64) if frames else None,
        damaged=tuple(reader.damaged),
    )
