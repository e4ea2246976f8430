"""From a decoded recording to the experts' inputs.

The frozen models run here, once per recording (or chunk of a long one): the log-mel front end, Whisper (the
transcript with word times, and the encoder states the voice expert reads), voice activity, face detection and
cropping, and the speaker encoder when asked. The experts (fusion.experts) take these features; prediction and the
benchmarks read recordings through this one path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from alignment.active_speaker import mouth_motion
from alignment.diarization import speech_spans
from encoders.asr import Utterance, Word, make_transcriber
from encoders.audio import log_mel
from encoders.face_detection import FACE_SIZE, FaceDetector, find_all_faces, main_face_crops
from encoders.loading import EncoderSources
from encoders.runtime import pick_device
from encoders.speakers import SpeakerEncoder
from encoders.vad import SpeechDetector, speech_within
from encoders.whisper_models import load_states_encoder, load_whisper
from encoders.whisper_states import WhisperStates
from fusion.errors import MediaError
from fusion.media.decoding import DEFAULT_FPS, Media, decode, is_short
from fusion.media.streaming import CHUNK_S, DecodeWorker, MediaChunk, read_chunks

# Seconds: a recording up to this long is read in this process, not in the decoding process (unless that runs
# already): starting the worker (a Python process that imports PyAV, OpenCV and the VAD) costs more than decoding
# a short clip while the models wait. A 3.3 s clip took 12.30 s to predict cold with the worker, 11.44 s without
# and 280 MB less (benchmarks/results/cold_start/results.md at commit 480133e).
IN_PROCESS_MAX_S = 60.0
IMAGE_DURATION_S = 1 / DEFAULT_FPS  # seconds: a still image counts as one sampled video frame


@dataclass
class RecordingFeatures:
    """What the frozen encoders make of one recording.

    mel: (n_frames, N_MELS) float32 log-mel, frame i at i * FRAME_SECONDS; None when there is no audio track
    utterances: Whisper's transcript with word times; [] when nothing is said or there is no audio
    face_crops: (n_frames, 48, 48) uint8 grey crops of the main face (zeros where absent); None: no video track
    face_times: (n_frames,) float64 seconds; face_present: (n_frames,) bool
    whisper_states: (n_states, whisper_dim) float32 Whisper encoder states (encoders.whisper_states), one per 20 ms
        of audio, their centre times in whisper_times (n_states,) float64; None unless the extractor was asked for them
    timings: seconds spent per stage
    start: seconds into the recording where these features begin (a chunk of a long recording; else 0). Every
        time above is from the start of the recording, and duration is this piece's.
    """

    path: str
    duration: float
    mel: np.ndarray | None
    utterances: list[Utterance]
    face_crops: np.ndarray | None
    face_times: np.ndarray | None
    face_present: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    start: float = 0.0
    whisper_states: np.ndarray | None = None
    whisper_times: np.ndarray | None = None
    damaged: tuple[tuple[float, float], ...] = ()  # (start, end) s that failed to decode and were skipped
    # (n,) bool per 32 ms voice-activity frame from `start` (encoders.vad); None when not detected (all audio counts)
    speech: np.ndarray | None = None
    # (n_windows, 192) float32 raw voice prints of windows inside the speech (encoders.speakers) and (n_windows, 2)
    # float64 their (start, end) seconds; None unless the extractor was asked for them (voice_prints=True)
    voice_prints: np.ndarray | None = None
    voice_print_times: np.ndarray | None = None
    # (n_frames,) float32 the main face's mouth motion since the frame before (alignment.active_speaker), NaN where
    # there is no face or no frame before in this piece; None without a video track
    mouth_motion: np.ndarray | None = None

    @property
    def speech_spans(self) -> list[tuple[float, float]]:
        """Stretches of speech (start, end) in seconds from the recording's start; [] without a VAD mask."""
        if self.speech is None:
            return []
        return [(self.start + a, self.start + b) for a, b in speech_spans(self.speech)]

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this recording actually has: audio track, spoken words, a face in some frame."""
        present = []
        if self.mel is not None:
            present.append("audio")
        if any(u.words for u in self.utterances):
            present.append("text")
        if self.face_present is not None and self.face_present.any():
            present.append("video")
        return tuple(present)

    @property
    def word_times(self) -> np.ndarray:
        """(n_words, 2) float64 start, end seconds of each word."""
        times = [(w.start, w.end) for u in self.utterances for w in u.words]
        return np.asarray(times, dtype=np.float64).reshape(-1, 2)


class FeatureExtractor:
    """Holds the frozen models (Whisper, face detector, ...), each loaded once, and extracts features per file.

    sources: the models (:class:`encoders.loading.EncoderSources`); those it leaves unchosen come from the
    environment variables FUSION_WHISPER_MODEL, FUSION_TEXT_MODEL and FUSION_FACE_MODEL, else by name (downloaded
    when online).
    """

    def __init__(
        self,
        *,
        sources: EncoderSources | None = None,
        fps: float = DEFAULT_FPS,
        device: str | torch.device | None = None,
        whisper_blocks: int | None = None,
        voice_prints: bool = False,
        prefetch: str | os.PathLike | None = None,
        chunk_s: float = CHUNK_S,
    ):
        """whisper_blocks: also keep the Whisper encoder states after this many blocks (None: not computed).
        voice_prints: also compute the speaker encoder's voice prints of the speech (who speaks when).
        prefetch: a recording to start decoding (see :meth:`prefetch`, in chunks of chunk_s) before the models
        load: its first chunks are ready when they are."""
        self.sources = (sources or EncoderSources()).resolve()
        self.face_detector = FaceDetector(self.sources.face)
        self.fps = fps
        self._decode_worker: DecodeWorker | None = None  # started by the first stream() that asks for it
        self._vad: SpeechDetector | None = None  # loaded by the first stream() that decodes in this process
        if prefetch is not None:
            self.prefetch(prefetch, chunk_s=chunk_s)
        self.whisper_states = None
        model = None
        if whisper_blocks is not None:  # states from the PyTorch encoder, whichever backend transcribes
            if self.sources.asr == "openai-whisper":  # the whole model, which the transcriber shares
                model = load_whisper(self.sources.whisper, pick_device(device))
                encoder = model.encoder
            else:  # the encoder alone, up to the block the voice reads
                encoder = load_states_encoder(self.sources.whisper, device, blocks=whisper_blocks)
            self.whisper_states = WhisperStates(encoder, blocks=whisper_blocks, bf16=True)
        self.transcriber = make_transcriber(
            self.sources.asr, self.sources.whisper, device=device, loaded=model, model=self.sources.asr_model
        )
        self.speaker_encoder = SpeakerEncoder(device=device or "cpu") if voice_prints else None

    def prefetch(self, path: str | os.PathLike, *, chunk_s: float = CHUNK_S) -> None:
        """Start decoding a recording in the decoding process now, so that the stream() of it that follows (with the
        same chunk_s) finds its first chunk decoded: while the models load, or while they finish the file before.
        Only where stream() would decode in that process by default (a long file, or the process runs already);
        a file that cannot be read says so when it is streamed."""
        if self._decode_worker is not None or not is_short(path, IN_PROCESS_MAX_S):
            self._worker().request(path, chunk_s=chunk_s)

    def _worker(self) -> DecodeWorker:
        if self._decode_worker is None:
            self._decode_worker = DecodeWorker(fps=self.fps, face_model=self.face_detector.model)
        return self._decode_worker

    def close(self) -> None:
        """Stop the decoding process, if one was started (it also stops when this process exits)."""
        if self._decode_worker is not None:
            self._decode_worker.close()
            self._decode_worker = None

    def __call__(self, path: str | os.PathLike) -> RecordingFeatures:
        """Decode a file once and extract every modality's features."""
        timings: dict[str, float] = {}
        with _timed(timings, "decode"):
            media = decode(path, fps=self.fps)
        return self.extract(media, timings=timings)

    def text_only(self, text: str, duration: float, *, path: str = "") -> RecordingFeatures:
        """Features of a transcript without media (e.g. a MELD row): its words spread evenly over duration seconds."""
        words = text.split()
        bounds = np.linspace(0.0, duration, len(words) + 1)
        utterance = Utterance(text, 0.0, duration, tuple(Word(w, a, b) for w, a, b in zip(words, bounds, bounds[1:])))
        utterances = [utterance] if words else []
        return RecordingFeatures(
            path=path,
            duration=duration,
            mel=None,
            utterances=utterances,
            face_crops=None,
            face_times=None,
            face_present=None,
        )

    def extract(self, media: Media, *, timings: dict[str, float] | None = None) -> RecordingFeatures:
        """Features of a whole decoded recording (a short file; long ones go through :meth:`stream`)."""
        timings = {} if timings is None else timings
        faces = []
        if media.frames is not None:
            with _timed(timings, "face_detection"):
                faces = find_all_faces(media.frames, self.face_detector, times=media.frame_times)
        chunk = MediaChunk(media.path, 0.0, media.duration, media.audio, media.frame_times, faces)
        return self.extract_chunk(chunk, timings=timings)

    def stream(
        self,
        path: str | os.PathLike,
        *,
        chunk_s: float = CHUNK_S,
        background: bool | None = None,
        timings: dict[str, float] | None = None,
    ) -> Iterator[RecordingFeatures]:
        """Features of a recording, one chunk of up to chunk_s seconds at a time, in memory that does not grow with
        the recording's length.

        background: decode and detect faces in a worker process (started on first use and kept for the next
        files), a chunk ahead of the models; else in turn with them, in this process. benchmarks/speed.py
        compares the two. None (the default): in the worker when it runs already or the recording is longer than
        IN_PROCESS_MAX_S, else here: a short file is read before a worker process would have started.
        timings (if given) accumulates the seconds per stage over all chunks; in the background, "decode" and
        "face_detection" overlap the other stages in wall-clock time.
        """
        timings = {} if timings is None else timings
        if background is None:
            background = self._decode_worker is not None or not is_short(path, IN_PROCESS_MAX_S)
        if background:
            chunks = self._worker().chunks(path, chunk_s=chunk_s, timings=timings)
        else:
            if self._vad is None:
                self._vad = SpeechDetector()
            chunks = read_chunks(
                path, fps=self.fps, detector=self.face_detector, chunk_s=chunk_s, timings=timings, vad=self._vad
            )
        for chunk in chunks:
            yield self.extract_chunk(chunk, timings=timings)

    def extract_chunk(self, chunk: MediaChunk, *, timings: dict[str, float] | None = None) -> RecordingFeatures:
        timings = {} if timings is None else timings
        mel, utterances, states, state_times = None, [], None, None
        if chunk.audio is not None and len(chunk.audio):
            with _timed(timings, "log_mel"):
                mel = log_mel(chunk.audio)
            if self.whisper_states is not None:
                with _timed(timings, "whisper_states"):
                    states, state_times = self.whisper_states(chunk.audio)
                    state_times = state_times + chunk.start
            if chunk.speech is None or chunk.speech.any():  # no speech detected: no Whisper call
                with _timed(timings, "whisper"):
                    heard = self.transcriber.transcribe(chunk.audio, speech=chunk.speech)
                    utterances = [u.shifted(chunk.start) for u in heard]
            if chunk.speech is not None:  # what Whisper hears where the detector finds no speech is invented
                utterances = [u for u in utterances if speech_within(u.start, u.end, chunk.speech, chunk.start)]
        speech, prints, print_times = chunk.speech, None, None
        if self.speaker_encoder is not None and chunk.audio is not None and len(chunk.audio):
            with _timed(timings, "voice_prints"):
                if speech is None:  # a whole file decoded here, without the decoding process's VAD
                    if self._vad is None:
                        self._vad = SpeechDetector()
                    self._vad.reset()
                    speech = self._vad(chunk.audio)
                prints, starts, ends = self.speaker_encoder.windows(chunk.audio, speech_spans(speech))
                print_times = np.stack([starts, ends], 1).reshape(-1, 2) + chunk.start

        crops = present = motion = None
        if chunk.frame_times is not None:
            faces = main_face_crops(chunk.faces)
            crops, present, motion = faces.crops, faces.present, mouth_motion(faces.mouths, faces.present)
        return RecordingFeatures(
            path=chunk.path,
            duration=chunk.duration,
            mel=mel,
            utterances=utterances,
            face_crops=crops,
            face_times=chunk.frame_times,
            face_present=present,
            timings=timings,
            start=chunk.start,
            whisper_states=states,
            whisper_times=state_times,
            damaged=chunk.damaged,
            speech=speech,
            voice_prints=prints,
            voice_print_times=print_times,
            mouth_motion=motion,
        )


def image_features(path: str | os.PathLike) -> RecordingFeatures:
    """Features of a face image that is already a tight crop (FER2013 layout): one video frame at time 0.

    The image is read in grey and resized to FACE_SIZE, the same preprocessing as the crops taken from video.
    """
    image = cv2.imread(os.fspath(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise MediaError(path, "not a readable image")
    if image.shape != (FACE_SIZE, FACE_SIZE):
        image = cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return RecordingFeatures(
        path=os.fspath(path),
        duration=IMAGE_DURATION_S,
        mel=None,
        utterances=[],
        face_crops=image[None],
        face_times=np.zeros(1),
        face_present=np.ones(1, dtype=bool),
    )


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
