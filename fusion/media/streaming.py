"""Long recordings in bounded memory: read a file as a sequence of chunks of a few minutes each.

A chunk holds its audio samples and, for each sampled video frame, the faces found in it with their crops; the
frames themselves are dropped as soon as their faces are cut out. Chunks end at the quietest moment near their
nominal length, so Whisper never sees a word cut in two. Decoding and face detection can run in a worker process
(:class:`DecodeWorker`), one chunk ahead of the models that consume the chunks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import cv2
import numpy as np

from encoders import SAMPLE_RATE
from encoders.face_detection import FaceDetector, FaceFinder, FrameFaces
from encoders.vad import SpeechDetector
from fusion.media.decoding import AudioBlock, MediaReader

CHUNK_S = 300.0  # seconds of recording per chunk at most: about ten Whisper windows, some tens of MB of audio and faces
# seconds: the first chunk is this short, and each next one twice as long up to CHUNK_S, so the models start after
# seconds rather than minutes of decoding, while later chunks are long enough that their cuts cost Whisper little
# (each cut leaves it one partly filled 30 s window)
FIRST_CHUNK_S = 30.0
CUT_SEARCH_S = 5.0  # seconds before the nominal chunk end searched for the quietest moment to cut at
QUIET_FRAME_S = 0.1  # seconds: the frames whose RMS is compared when choosing the cut
# seconds of audio a chunk may wait for the video track to reach its cut. Containers interleave tracks within
# about a second; a video track that ended early must not hold back the audio (and grow the buffer) forever.
MAX_INTERLEAVE_S = 10.0


@dataclass
class MediaChunk:
    """[start, start + duration) of a recording, decoded."""

    path: str
    start: float  # seconds from the start of the recording
    duration: float  # seconds
    audio: np.ndarray | None  # (samples,) float32 mono 16 kHz; None when the file has no audio track
    frame_times: np.ndarray | None  # (n_frames,) float64 seconds of the sampled frames; None: no video track
    faces: list[FrameFaces]  # per sampled frame, the faces in it
    # (start, end) seconds of the recording's packets that failed to decode and were skipped (fusion.media.decoding);
    # given with the last chunk, once the whole file has been read
    damaged: tuple[tuple[float, float], ...] = ()
    # (len(audio) // 512,) bool: speech in each 32 ms frame from start (encoders.vad); None when not detected
    speech: np.ndarray | None = None


def read_chunks(
    path: str | os.PathLike,
    *,
    fps: float,
    detector: FaceDetector,
    chunk_s: float = CHUNK_S,
    threads: int | None = None,
    timings: dict[str, float] | None = None,
    vad: SpeechDetector | None = None,
) -> Iterator[MediaChunk]:
    """Decode a recording chunk by chunk; the chunks partition [0, duration]. The first is FIRST_CHUNK_S long (or
    chunk_s, if shorter), and each next one twice the one before, up to chunk_s.

    threads: video decoding threads (see MediaReader). timings (if given) accumulates seconds spent in "decode",
    "face_detection" and "vad". vad: marks each chunk's speech (MediaChunk.speech). Raises MediaError as
    MediaReader does; a truncated file raises only after its decodable chunks were yielded.
    """
    _check_chunk_s(chunk_s)
    timings = {} if timings is None else timings
    if vad is not None:
        vad.reset()
    for chunk in _read_chunks(path, fps=fps, detector=detector, chunk_s=chunk_s, threads=threads, timings=timings):
        if vad is not None and chunk.audio is not None:
            started = time.perf_counter()
            chunk = dataclasses.replace(chunk, speech=vad(chunk.audio))
            timings["vad"] = timings.get("vad", 0.0) + time.perf_counter() - started
        yield chunk


def _read_chunks(path, *, fps, detector, chunk_s, threads, timings) -> Iterator[MediaChunk]:
    with MediaReader(path, fps=fps, threads=threads) as reader:
        buffer = _ChunkBuffer(reader, chunk_s)
        finder = FaceFinder(detector)
        items = iter(reader)
        while True:
            started = time.perf_counter()
            item = next(items, None)
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - started
            if isinstance(item, AudioBlock):
                buffer.add_audio(item.samples)
            else:
                started = time.perf_counter()
                # the end of the file (None) resolves the frames the finder still holds
                for frame_time, faces in finder.finish() if item is None else finder.push(item.time, item.image):
                    buffer.add_frame(frame_time, faces)
                timings["face_detection"] = timings.get("face_detection", 0.0) + time.perf_counter() - started
                if item is None:
                    break
            while (chunk := buffer.next_chunk(ended=False)) is not None:
                yield chunk
        while (chunk := buffer.next_chunk(ended=True)) is not None:
            yield chunk
        yield dataclasses.replace(buffer.last_chunk(end=reader.duration), damaged=tuple(reader.damaged))


def _check_chunk_s(chunk_s: float) -> None:
    if chunk_s <= CUT_SEARCH_S:
        raise ValueError(f"chunk_s must be longer than {CUT_SEARCH_S} s, got {chunk_s}")


class _ChunkBuffer:
    """What has been decoded but not yet handed over, and where the next chunk ends."""

    def __init__(self, reader: MediaReader, chunk_s: float):
        self.path = reader.path
        self.has_audio = reader.has_audio_track
        self.has_video = reader.has_video_track
        self.max_chunk_s = chunk_s
        self.chunk_s = min(FIRST_CHUNK_S, chunk_s)  # nominal length of the next chunk
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
            audio_end = (self.start_sample + self.samples) / SAMPLE_RATE
            if audio_end < target:
                return None
            if self.cut is None:  # chosen once per chunk, however long the video track takes to catch up
                cut_sample = self._quietest_sample(target)
                self.cut = cut_sample, (self.start_sample + cut_sample) / SAMPLE_RATE
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
        end = round(target * SAMPLE_RATE) - self.start_sample
        frame = round(QUIET_FRAME_S * SAMPLE_RATE)
        first = max(0, end - round(CUT_SEARCH_S * SAMPLE_RATE))
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
        self.chunk_s = min(2 * self.chunk_s, self.max_chunk_s)
        return chunk


class DecodeWorker:
    """A process that decodes recordings and finds their faces (:func:`read_chunks`), a chunk ahead of the models
    in this one.

        worker = DecodeWorker(fps=5.0, face_model=detector.model)
        for chunk in worker.chunks("interview.mp4", chunk_s=CHUNK_S):
            ...
        worker.close()

    A process rather than a thread, because the two then share no interpreter lock: Whisper's decoding loop and the
    frame loop are both Python, and as threads of one process they slowed each other down (benchmarks/speed.py,
    --compare-background). It runs ``python -m fusion.media.decode_worker`` and speaks pickle over its standard input
    and output, rather than using multiprocessing, whose spawned children re-run the caller's main script: a user's
    script calling fusion.predict() needs no ``if __name__ == "__main__"`` guard. Started on first use, it serves
    file after file, and is replaced if a consumer stops reading a file part-way. A file asked for ahead
    (:meth:`request`: while the models load, or while they finish the file before) is decoded in the meantime.
    """

    def __init__(self, *, fps: float, face_model: str | None):
        self.fps = fps
        self.face_model = face_model
        self._process: subprocess.Popen | None = None
        self._requested: deque[tuple[str, float]] = deque()  # (path, chunk_s) sent and not yet read to the end

    def request(self, path: str | os.PathLike, *, chunk_s: float = CHUNK_S) -> None:
        """Ask for a recording now; chunks() of it later reads what was decoded meanwhile. The process takes the
        files in the order they were asked for, each at most a chunk ahead of its reader."""
        _check_chunk_s(chunk_s)
        process = self._start()
        self._send(process, (os.fspath(path), chunk_s))
        self._requested.append((os.fspath(path), chunk_s))

    def chunks(
        self, path: str | os.PathLike, *, chunk_s: float = CHUNK_S, timings: dict[str, float] | None = None
    ) -> Iterator[MediaChunk]:
        """The chunks of one recording, as read_chunks gives them; its exceptions are raised here.

        timings (if given) gets the worker's seconds in "decode" and "face_detection" once the file is done.
        """
        _check_chunk_s(chunk_s)  # here too, so that the error is raised in this process
        if self._requested and self._requested[0] != (os.fspath(path), chunk_s):
            self.close()  # other files were asked for first and would come first: start afresh
        if not self._requested:
            self.request(path, chunk_s=chunk_s)
        process = self._process
        finished = False
        try:
            while True:
                kind, value = self._receive(process)
                if kind == "chunk":
                    yield value
                    continue
                finished = True
                self._requested.popleft()
                if kind == "error":
                    raise value
                if timings is not None:
                    for stage, seconds in value.items():
                        timings[stage] = timings.get(stage, 0.0) + seconds
                return
        finally:
            if not finished:  # the worker would go on decoding the rest of the file: replace it instead
                self.close()

    def _start(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "fusion.media.decode_worker", json.dumps([self.fps, self.face_model])],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self._process

    def _send(self, process: subprocess.Popen, request: tuple[str, float]) -> None:
        try:
            pickle.dump(request, process.stdin)
            process.stdin.flush()
        except OSError:
            raise self._stopped(process) from None

    def _receive(self, process: subprocess.Popen) -> tuple[str, object]:
        try:
            return pickle.load(process.stdout)
        except (EOFError, pickle.UnpicklingError, OSError):
            raise self._stopped(process) from None

    @staticmethod
    def _stopped(process: subprocess.Popen) -> RuntimeError:
        process.kill()
        return RuntimeError(
            f"the decoding process (python -m fusion.media.decode_worker) stopped unexpectedly (exit code "
            f"{process.wait()}); its error, if any, is on standard error above"
        )

    def close(self) -> None:
        """Stop the process (what was asked of it is dropped)."""
        self._requested.clear()
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                pipe.close()
            self._process = None

    def __del__(self) -> None:
        self.close()


def serve(requests: BinaryIO, replies: BinaryIO, *, fps: float, face_model: str | None) -> None:
    """The worker's side: read pickled (path, chunk_s) requests until the end of requests, and reply to each with
    pickled ("chunk", MediaChunk) messages, then ("done", timings) or ("error", exception).

    It decodes and detects faces and speech on one thread, leaving the other cores to the models: measured on 2
    cores, threads of its own (FFmpeg's, OpenCV's) slowed Whisper more than they sped the worker up.
    """
    cv2.setNumThreads(1)
    detector = FaceDetector(face_model)
    vad = SpeechDetector()
    while True:
        try:
            path, chunk_s = pickle.load(requests)
        except EOFError:
            return
        timings: dict[str, float] = {}
        try:
            chunks = read_chunks(path, fps=fps, detector=detector, chunk_s=chunk_s, threads=1, timings=timings, vad=vad)
            for chunk in chunks:
                pickle.dump(("chunk", chunk), replies, protocol=pickle.HIGHEST_PROTOCOL)
                replies.flush()
            reply = ("done", timings)
        except Exception as error:  # handed to the consumer, which raises it
            reply = ("error", _portable(error))
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def _portable(error: Exception) -> Exception:
    """error, or a RuntimeError saying what it was if it cannot be pickled; with the worker's traceback as a note."""
    error.add_note("in the decoding process:\n" + "".join(traceback.format_exception(error)))
    try:
        pickle.dumps(error)
        return error
    except Exception:
        portable = RuntimeError(f"{type(error).__name__}: {error}")
        portable.add_note(error.__notes__[-1])
        return portable
