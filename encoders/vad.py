"""Voice activity detection: which stretches of the audio hold speech, so that silence and noise do not speak for
the voice.

Silero VAD (MIT licence), read from the file that PyPI's ``silero-vad`` package ships inside itself; nothing is
downloaded. Measured on this project's 2-core CPU (one thread; benchmarks/results/vad.md): about 3.9 s per 10
minutes of audio, and it found no speech in 30 s of white noise, where webrtcvad (mode 3, its most aggressive)
called every frame speech. It runs in the decoding process (:mod:`fusion.media.streaming`), beside the models rather
than in their way.
"""

from __future__ import annotations

import numpy as np
import torch

from encoders import SAMPLE_RATE

FRAME_SAMPLES = 512  # samples per VAD frame at 16 kHz (32 ms): the frame size Silero VAD's 16 kHz model takes
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
SPEECH_THRESHOLD = 0.5  # speech probability above which a frame is speech (Silero's own default)
# Speech is widened by this much on each side: word onsets and trailing consonants are quieter than the vowels
# the detector keys on, and a token of the audio CNN (40 ms) at a speech edge should still count.
HANGOVER_SECONDS = 0.2


class SpeechDetector:
    """Speech probability per 32 ms frame of a recording given in consecutive pieces (its chunks).

    detector = SpeechDetector()
    detector.reset()                        # a new recording
    speech = detector(chunk_audio)          # (n_frames,) bool, frame i at chunk start + i * FRAME_SECONDS
    """

    def __init__(self):
        from silero_vad import load_silero_vad  # the model file inside the installed package

        self.model = load_silero_vad()

    def reset(self) -> None:
        """Forget the previous recording (the detector's recurrent state)."""
        self.model.reset_states()

    @torch.inference_mode()
    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """(samples,) float32 mono 16 kHz -> (len(audio) // FRAME_SAMPLES,) bool: True on speech frames.

        Frames are cut from the start of this piece; the samples left over after its last whole frame (under 32 ms)
        are not judged, which HANGOVER_SECONDS covers. The recurrent state carries over to the next piece.
        """
        frames = len(audio) // FRAME_SAMPLES
        x = torch.from_numpy(np.ascontiguousarray(audio[: frames * FRAME_SAMPLES], dtype=np.float32))
        probabilities = np.array(
            [self.model(frame, SAMPLE_RATE).item() for frame in x.view(frames, FRAME_SAMPLES)], dtype=np.float32
        )
        return probabilities > SPEECH_THRESHOLD


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
