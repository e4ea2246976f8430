"""Voice activity detection: which stretches of the audio hold speech, so that silence and noise do not speak for
the voice.

Silero VAD (MIT licence), the ONNX file that PyPI's ``silero-vad`` package ships inside itself, run by onnxruntime;
nothing is downloaded. Its TorchScript twin in the same package gives the same probabilities (at most 1.2e-5 apart,
no frame called otherwise) but needs torch: a process with the decoding process's modules and the detector took
273 MB with it and 111 MB with onnxruntime, which also ran 3.3 times faster (1.4 against 4.8 s per 10 minutes of
speech, one thread). It found no speech in 30 s of white noise, where webrtcvad (mode 3, its most aggressive) called
every frame speech (all four figures: benchmarks/vad.py, benchmarks/results/vad.md). It runs in the decoding process
(:mod:`fusion.media.streaming`), beside the models rather than in their way.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from encoders import SAMPLE_RATE

FRAME_SAMPLES = 512  # samples per VAD frame at 16 kHz (32 ms): the frame size Silero VAD's 16 kHz model takes
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
# samples of the previous frame that the model reads before each 16 kHz frame (Silero VAD v5's context); zeros
# before the first frame of a recording
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)  # the model's recurrent state for one stream
SPEECH_THRESHOLD = 0.5  # speech probability above which a frame is speech (Silero's own default)
# Speech is widened by this much on each side: word onsets and trailing consonants are quieter than the vowels
# the detector keys on, and a token of the audio CNN (40 ms) at a speech edge should still count.
HANGOVER_SECONDS = 0.2
MODEL_FILE = "silero_vad.onnx"  # inside the silero_vad package's data folder


class SpeechDetector:
    """Speech probability per 32 ms frame of a recording given in consecutive pieces (its chunks).

    detector = SpeechDetector()
    detector.reset()                        # a new recording
    speech = detector(chunk_audio)          # (n_frames,) bool, frame i at chunk start + i * FRAME_SECONDS
    """

    def __init__(self):
        import onnxruntime

        model = _model_file()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # one 32 ms frame at a time: more threads only add hand-offs
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        """Forget the previous recording (the detector's recurrent state and context)."""
        self.state = np.zeros(STATE_SHAPE, np.float32)
        self.context = np.zeros((1, CONTEXT_SAMPLES), np.float32)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """(samples,) float32 mono 16 kHz -> (len(audio) // FRAME_SAMPLES,) speech probability per frame; the state
        and context carry over to the next piece."""
        frames = len(audio) // FRAME_SAMPLES
        audio = np.ascontiguousarray(audio[: frames * FRAME_SAMPLES], dtype=np.float32).reshape(frames, FRAME_SAMPLES)
        rate = np.array(SAMPLE_RATE, np.int64)
        out = np.empty(frames, np.float32)
        for k in range(frames):
            x = np.concatenate([self.context, audio[k : k + 1]], axis=1)
            probability, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": rate})
            self.context = x[:, -CONTEXT_SAMPLES:]
            out[k] = probability[0, 0]
        return out

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """(samples,) float32 mono 16 kHz -> (len(audio) // FRAME_SAMPLES,) bool: True on speech frames.

        Frames are cut from the start of this piece; the samples left over after its last whole frame (under 32 ms)
        are not judged, which HANGOVER_SECONDS covers. The recurrent state carries over to the next piece.
        """
        return self.probabilities(audio) > SPEECH_THRESHOLD


def _model_file() -> str:
    """The ONNX file inside the installed silero-vad package (a dependency of this one), found without importing
    the package, whose own code imports torch."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the voice activity detector's package is not installed: pip install silero-vad")
    path = Path(spec.submodule_search_locations[0]) / "data" / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the voice activity detector's model is missing from the installed silero-vad package; "
            "reinstall it with `pip install --force-reinstall silero-vad`"
        )
    return str(path)


def speech_at(times: np.ndarray, speech: np.ndarray, speech_start: float) -> np.ndarray:
    """Whether each time (seconds) lies within HANGOVER_SECONDS of a speech frame.

    speech: (n_frames,) bool from SpeechDetector, frame i spanning speech_start + [i, i + 1) * FRAME_SECONDS.
    """
    if not speech.any():
        return np.zeros(len(times), bool)
    starts = speech_start + np.flatnonzero(speech) * FRAME_SECONDS  # (n_speech,) increasing
    ends = starts + FRAME_SECONDS
    before = np.searchsorted(starts, times, side="right") - 1  # the last speech frame starting at or before
    after = before + 1  # the first one starting after
    gap_before = np.where(before >= 0, np.maximum(times - ends[np.maximum(before, 0)], 0.0), np.inf)
    gap_after = np.where(after < len(starts), starts[np.minimum(after, len(starts) - 1)] - times, np.inf)
    return np.minimum(gap_before, gap_after) <= HANGOVER_SECONDS


def speech_within(start: float, end: float, speech: np.ndarray, speech_start: float) -> bool:
    """Whether any speech frame lies within HANGOVER_SECONDS of [start, end] (seconds); speech as in speech_at."""
    frames = speech_start + np.flatnonzero(speech) * FRAME_SECONDS
    return bool(((frames + FRAME_SECONDS >= start - HANGOVER_SECONDS) & (frames <= end + HANGOVER_SECONDS)).any())


def speech_stretches(
    speech: np.ndarray, *, join_s: float, pad_s: float = 0.0, limit_s: float = np.inf
) -> list[tuple[float, float]]:
    """(n_frames,) bool from SpeechDetector -> the runs of speech frames as (start, end) seconds from the first
    frame, each widened by pad_s on both sides (within 0 .. limit_s), and joined where the pause between two is
    shorter than join_s."""
    padded = np.concatenate([[False], np.asarray(speech, bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    stretches: list[list[float]] = []
    for first, last in zip(edges[::2], edges[1::2]):
        start, end = max(0.0, first * FRAME_SECONDS - pad_s), min(limit_s, last * FRAME_SECONDS + pad_s)
        if stretches and start - stretches[-1][1] < join_s:
            stretches[-1][1] = max(stretches[-1][1], end)
        elif end > start:
            stretches.append([start, end])
    return [(a, b) for a, b in stretches]
