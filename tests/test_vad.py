"""Voice activity detection (encoders.vad) on real speech and on noise."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.vad import FRAME_SECONDS, HANGOVER_SECONDS, SpeechDetector, speech_at
from fusion.media.decoding import decode


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


def test_speech_is_found_in_a_spoken_sentence_and_not_in_noise(detector, ravdess_clips):
    audio = decode(ravdess_clips[0]).audio
    detector.reset()
    speech = detector(audio)
    assert len(speech) == len(audio) // 512
    assert 0.3 < speech.mean() < 0.95  # a sentence with silence before and after it
    noise = (np.random.default_rng(0).standard_normal(10 * 16_000) * 0.1).astype(np.float32)
    detector.reset()
    assert detector(noise).mean() < 0.05


def test_pieces_of_a_recording_give_what_the_whole_gives(detector, ravdess_clips):
    audio = decode(ravdess_clips[0]).audio
    detector.reset()
    whole = detector(audio)
    detector.reset()
    cut = 512 * 40  # a cut on a frame boundary: the state carries over, so the frames agree
    pieces = np.concatenate([detector(audio[:cut]), detector(audio[cut:])])
    assert (pieces == whole).mean() > 0.97


def test_the_onnx_model_gives_the_torchscript_models_probabilities(detector, ravdess_clips):
    """The same package's TorchScript model, run frame by frame as its own utilities run it, agrees with the ONNX
    file that the detector runs without torch."""
    torch = pytest.importorskip("torch")
    from silero_vad import load_silero_vad

    audio = decode(ravdess_clips[0]).audio
    detector.reset()
    ours = detector.probabilities(audio)
    scripted = load_silero_vad()
    frames = torch.from_numpy(audio[: len(ours) * 512].copy()).view(-1, 512)
    theirs = np.array([scripted(frame, 16_000).item() for frame in frames])
    assert np.abs(ours - theirs).max() < 1e-4


def test_the_decoding_process_imports_no_torch():
    """The decoding process runs the detector; torch would cost it about 200 MB of memory."""
    import subprocess
    import sys

    code = (
        "import sys; from fusion.media import decode_worker; from encoders.vad import SpeechDetector; "
        "SpeechDetector(); print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_speech_at_widens_speech_by_the_hangover():
    speech = np.zeros(100, bool)
    speech[50:60] = True  # 1.6 s to 1.92 s after the start
    start = 10.0
    first, last = start + 50 * FRAME_SECONDS, start + 60 * FRAME_SECONDS
    times = np.array([first - HANGOVER_SECONDS - 0.01, first - HANGOVER_SECONDS + 0.01, first + 0.1, last + 0.19,
                      last + 0.21, 0.0])  # fmt: skip
    assert speech_at(times, speech, start).tolist() == [False, True, True, True, False, False]
    assert not speech_at(times, np.zeros(100, bool), start).any()
