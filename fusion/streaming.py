"""Long recordings in bounded memory: read a file as a sequence of chunks of a few minutes each.

A chunk holds its audio samples and, for each sampled video frame, the faces found in it with their crops; the
frames themselves are dropped as soon as their faces are cut out. Chunks end at the quietest moment near their
nominal length, so Whisper never sees a word cut in two. Decoding and face detection run in a background thread,
one chunk ahead of the models that consume the chunks.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from queue import Empty, Full, Queue
from typing import TypeVar

import numpy as np

from encoders.face import FaceDetector, FrameFaces, find_faces
from fusion.media import AUDIO_SAMPLE_RATE, AudioBlock, MediaReader

CHUNK_S = 300.0  # seconds of recording per chunk: about ten Whisper windows, some tens of MB of audio and faces
CUT_SEARCH_S = 5.0  # seconds before the nominal chunk end searched for the quietest moment to cut at
QUIET_FRAME_S = 0.1  # seconds: the frames whose RMS is compared when choosing the cut
# seconds of audio a chunk may wait for the video track to reach its cut. Containers interleave tracks within
# about a second; a video track that ended early must not hold back the audio (and grow the buffer) forever.
MAX_INTERLEAVE_S = 10.0
POLL_S = 0.1  # seconds between checks of whether the consumer of a background iterator has gone


@dataclass
class MediaChunk:
    """[start, start + duration) of a recording, decoded."""

    path: str
    start: float  # seconds from the start of the recording
    duration: float  # seconds
    audio: np.ndarray | None  # (samples,) float32 mono 16 kHz; None when the file has no audio track
    frame_times: np.ndarray | None  # (n_frames,) float64 seconds of the sampled frames; None: no video track
    faces: list[FrameFaces]  # per sampled frame, the faces in it


def read_chunks(
    path: str | os.PathLike,
    *,
    fps: float,
    detector: FaceDetector,
    chunk_s: float = CHUNK_S,
    timings: dict[str, float] | None = None,
) -> Iterator[MediaChunk]:
    """Decode a recording chunk by chunk; the chunks partition [0, duration].

    timings (if given) accumulates seconds spent in "decode" and "face_detection". Raises MediaError as
    MediaReader does; a truncated file raises only after its decodable chunks were yielded.
    """
    if chunk_s <= CUT_SEARCH_S:
        raise ValueError(f"chunk_s must be longer than {CUT_SEARCH_S} s, got {chunk_s}")
    timings = {} if timings is None else timings
    with MediaReader(path, fps=fps) as reader:
        buffer = _ChunkBuffer(reader, chunk_s)
        items = iter(reader)
        while True:
            started = time.perf_counter()
            item = next(items, None)
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - started
            if item is None:
                break
            if isinstance(item, AudioBlock):
                buffer.add_audio(item.samples)
            else:
                started = time.perf_counter()
                buffer.add_frame(item.time, find_faces(item.image, detector))
                timings["face_detection"] = timings.get("face_detection", 0.0) + time.perf_counter() - started
            while (chunk := buffer.next_chunk(ended=False)) is not None:
                yield chunk
        while (chunk := buffer.next_chunk(ended=True)) is not None:
            yield chunk
        yield buffer.last_chunk(end=reader.duration)


class _ChunkBuffer:
    """What has been decoded but not yet handed over, and where the next chunk ends."""

    def __init__(self, reader: MediaReader, chunk_s: float):
        self.path = reader.path
        self.has_audio = reader.has_audio_track
        self.has_video = reader.has_video_track
        self.chunk_s = chunk_s
        self.audio: list[np.ndarray] = []
        self.samples = 0  # in self.audio
        self.start_sample = 0  # of the buffered audio, from the start of the recording
        self.start = 0.0  # seconds: where the next chunk starts
        self.frame_times: list[float] = []
        self.faces: list[FrameFaces] = []
        self.video_time = -math.inf  # seconds: the latest sampled frame
        self.cut: tuple[int, float] | None = None  # the next chunk's end (buffer sample, seconds), once chosen

    def add_audio(self, samples: np.ndarray) -> None:
        self.audio.append(samples)
        self.samples += len(samples)

    def add_frame(self, time_s: float, faces: FrameFaces) -> None:
        self.frame_times.append(time_s)
        self.faces.append(faces)
        self.video_time = time_s

    def next_chunk(self, *, ended: bool) -> MediaChunk | None:
        """The next full chunk, once the buffer reaches past its end (or the file has ended); else None."""
        target = self.start + self.chunk_s
        if self.has_audio:
            audio_end = (self.start_sample + self.samples) / AUDIO_SAMPLE_RATE
            if audio_end < target:
                return None
            if self.cut is None:  # chosen once per chunk, however long the video track takes to catch up
                cut_sample = self._quietest_sample(target)
                self.cut = cut_sample, (self.start_sample + cut_sample) / AUDIO_SAMPLE_RATE
            cut_sample, cut = self.cut
            video_behind = self.has_video and self.video_time < cut and audio_end < cut + MAX_INTERLEAVE_S
            if video_behind and not ended:
                return None
        elif self.video_time < target:  # more frames to come, or the file ended here: last_chunk takes the rest
            return None
        else:
            cut_sample, cut = 0, target
        return self._take(cut_sample, cut)

    def last_chunk(self, *, end: float) -> MediaChunk:
        """Everything left, up to the recording's end (seconds)."""
        return self._take(self.samples, max(end, self.start))

    def _quietest_sample(self, target: float) -> int:
        """The buffer offset (samples) of the middle of the quietest QUIET_FRAME_S in the CUT_SEARCH_S before target."""
        audio = np.concatenate(self.audio) if len(self.audio) > 1 else self.audio[0]
        self.audio = [audio]
        end = round(target * AUDIO_SAMPLE_RATE) - self.start_sample
        frame = round(QUIET_FRAME_S * AUDIO_SAMPLE_RATE)
        first = max(0, end - round(CUT_SEARCH_S * AUDIO_SAMPLE_RATE))
        n_frames = (end - first) // frame
        if n_frames < 1:
            return end
        window = audio[end - n_frames * frame : end].astype(np.float64).reshape(n_frames, frame)
        quietest = int(np.argmin((window**2).mean(1)))
        return end - n_frames * frame + quietest * frame + frame // 2

    def _take(self, cut_sample: int, cut: float) -> MediaChunk:
        audio = None
        if self.has_audio:
            buffered = np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)
            audio, rest = buffered[:cut_sample], buffered[cut_sample:]
            self.audio, self.samples = [rest], len(rest)
            self.start_sample += cut_sample
        inside = sum(1 for t in self.frame_times if t < cut)
        chunk = MediaChunk(
            path=self.path,
            start=self.start,
            duration=cut - self.start,
            audio=audio,
            frame_times=np.array(self.frame_times[:inside], np.float64) if self.has_video else None,
            faces=self.faces[:inside],
        )
        del self.frame_times[:inside], self.faces[:inside]
        self.start, self.cut = cut, None
        return chunk


T = TypeVar("T")


def in_background(items: Iterator[T], *, ahead: int = 1) -> Iterator[T]:
    """Produce items in a background thread, at most ahead items before the consumer.

    An exception in the producer is raised in the consumer, at the point where the item would have come; when the
    consumer stops early, the producer stops after the item it is working on.
    """
    queue: Queue = Queue(maxsize=ahead)
    stop = threading.Event()

    def put(entry: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=POLL_S)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as error:  # handed to the consumer, which raises it
            put((False, error))
        finally:
            if hasattr(items, "close"):
                items.close()

    thread = threading.Thread(target=produce, name="fusion-decode", daemon=True)
    thread.start()
    try:
        while True:
            try:
                is_item, value = queue.get(timeout=POLL_S)
            except Empty:
                if not thread.is_alive():
                    raise RuntimeError("the background producer stopped without a result") from None
                continue
            if not is_item:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        thread.join()
