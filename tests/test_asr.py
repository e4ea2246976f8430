"""The ctranslate2 speech recognition backend: fed only the speech, its times mapped back to the recording, the same
words as openai-whisper on real speech, and a clear error for a missing model."""

from __future__ import annotations

import numpy as np
import pytest

from encoders import SAMPLE_RATE
from encoders.asr import FED_GAP_S, SPEECH_PAD_S, FastTranscriber, _TimeMap, make_transcriber, speech_pieces
from encoders.loading import ASR_ENV, ModelNotFoundError
from encoders.vad import FRAME_SAMPLES, SpeechDetector


def test_speech_pieces_are_padded_joined_and_clipped():
    speech = np.zeros(400, bool)  # 400 frames of 32 ms: 12.8 s
    speech[10:20] = True  # 0.32-0.64 s
    speech[30:40] = True  # 0.96-1.28 s: 0.32 s after the first, joined to it
    speech[300:310] = True  # 9.6 s: far from both
    n = 400 * FRAME_SAMPLES
    pieces = speech_pieces(speech, n)
    pad = round(SPEECH_PAD_S * SAMPLE_RATE)
    assert pieces == [(0, 40 * FRAME_SAMPLES + pad), (300 * FRAME_SAMPLES - pad, 310 * FRAME_SAMPLES + pad)]
    assert speech_pieces(np.zeros(10, bool), 10 * FRAME_SAMPLES) == []
    assert speech_pieces(np.ones(10, bool), 10 * FRAME_SAMPLES) == [(0, 10 * FRAME_SAMPLES)]


def test_times_in_the_fed_speech_map_back_to_the_recording():
    # 1-2 s and 5-6 s of the recording, fed as 0-1 s and, after the gap, 1.5-2.5 s
    to_recording = _TimeMap([(16000, 32000), (80000, 96000)])
    second = 1.0 + FED_GAP_S
    assert to_recording(0.5) == pytest.approx(1.5)
    assert to_recording(second + 0.5) == pytest.approx(5.5)
    assert to_recording(1.0 + FED_GAP_S / 2) == pytest.approx(2.0)  # in the gap: the end of the first piece
    assert to_recording(second) == pytest.approx(5.0)  # a word starting on a piece's start starts in it
    assert to_recording(second, end=True) == pytest.approx(2.0)  # a word ending there ends in the piece before
    assert to_recording(second + 5) == pytest.approx(6.0)  # past the end: clipped to the last piece


@pytest.fixture(scope="module")
def fast(shared) -> FastTranscriber:
    return make_transcriber("ctranslate2")


def test_words_after_a_long_silence_keep_their_times(fast, shared):
    from fusion.media.decoding import decode

    take = decode(shared / "data/ravdess-speech-16k/Actor_01/03-01-01-01-01-01-01.flac").audio
    silence = np.zeros(20 * SAMPLE_RATE, np.float32)
    audio = np.concatenate([silence, take, silence, take])
    detector = SpeechDetector()
    detector.reset()
    speech = detector(audio)
    fed = speech_pieces(speech, len(audio))
    assert sum(b - a for a, b in fed) < 0.25 * len(audio), "only the speech is fed"
    with_speech = fast.transcribe(audio, speech=speech)
    kids = [w.start for u in with_speech for w in u.words if "kids" in w.text.lower()]
    take_s = len(take) / SAMPLE_RATE
    assert len(kids) == 2
    assert 20 < kids[0] < 20 + take_s and 40 + take_s < kids[1] < 40 + 2 * take_s, kids
    # each "Kids" starts where the detector hears its take begin, or in the padding fed before it (Whisper tends to
    # time a first word from the start of what it is fed: whole-audio decoding puts this one at 20.02 s)
    frames = np.flatnonzero(speech) * FRAME_SAMPLES / SAMPLE_RATE
    for start, onset in zip(kids, [frames[frames > 20][0], frames[frames > 40 + take_s][0]]):
        assert onset - SPEECH_PAD_S - 0.05 <= start <= onset + 0.3, (kids, onset)


def test_both_backends_hear_the_same_words(fast, shared, ravdess_clips):
    from fusion.media.decoding import decode

    reference = make_transcriber("openai-whisper")
    same = 0
    for path in ravdess_clips:
        audio = decode(path).audio
        a = [w.text.lower().strip(".,!?") for u in reference.transcribe(audio) for w in u.words]
        b = [w.text.lower().strip(".,!?") for u in fast.transcribe(audio) for w in u.words]
        same += a == b
    assert same >= len(ravdess_clips) - 1, f"{same} of {len(ravdess_clips)} clips transcribed alike"


def test_a_missing_ctranslate2_model_names_the_folder_and_the_variable(shared, tmp_path):
    with pytest.raises(ModelNotFoundError, match=ASR_ENV) as error:
        FastTranscriber(tmp_path / "no-such-model")
    assert "no-such-model" in str(error.value) and "no such folder" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no model.bin"):
        FastTranscriber(tmp_path / "empty")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.bin").write_bytes(b"not a model" * 10)
    with pytest.raises(ModelNotFoundError, match="not a CTranslate2 Whisper model"):
        FastTranscriber(damaged)


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="ctranslate2"):
        make_transcriber("whisper.cpp")


def test_a_whisper_checkpoint_without_a_known_conversion_says_how_to_go_on(shared, tmp_path, monkeypatch):
    monkeypatch.delenv(ASR_ENV, raising=False)
    other = tmp_path / "my-finetuned-whisper.pt"
    with pytest.raises(ModelNotFoundError, match=f"(?s)--asr openai-whisper.*{ASR_ENV}"):
        FastTranscriber(whisper=other)
    # a local copy of tiny.en (as ../shared has it) is known: the wheel's conversion
    assert FastTranscriber(whisper=shared / "models/whisper/tiny.en.pt").name.endswith("model")
