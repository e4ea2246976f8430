"""The voice expert's speaker normalisation (fusion.experts.voice): a speaker's frames standardised with their own
statistics shrunk towards the training population's, and the Whisper encoder read out of a CTranslate2 model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.audio import N_MELS
from encoders.ct2_whisper import CTranslate2FormatError, load_encoder, read_variables
from encoders.whisper_models import encoder_parts
from fusion.experts.voice import (
    PRIOR_SECONDS,
    FrameStatistics,
    SpeakerStatistics,
    SpeechFeatures,
    VoiceConfig,
    VoiceExpert,
    predict_proba,
)


def features(rng, seconds: float, *, shift: float = 0.0, blocks: int = 4) -> SpeechFeatures:
    """Random frames (a tiny stand-in, for the arithmetic only) of the given length, offset by shift."""
    mel = rng.normal(shift, 1.0, (round(seconds * 100), N_MELS)).astype(np.float32)
    states = rng.normal(shift, 1.0, (blocks, round(seconds * 50), 384)).astype(np.float16)
    return SpeechFeatures(mel, states)


def expert_with_prior(rng) -> VoiceExpert:
    model = VoiceExpert(VoiceConfig(speaker_normalisation=True))
    model.set_prior(SpeakerStatistics.of([features(rng, 60.0)]))  # a population centred on 0 with unit spread
    return model


def test_statistics_add_up_over_recordings_as_over_their_frames():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(20, 5))
    both = FrameStatistics.of(a) + FrameStatistics.of(b)
    mean, std = both.standardiser(np.zeros(5), np.ones(5), 0.0)
    np.testing.assert_allclose(mean, np.concatenate([a, b]).mean(0))
    np.testing.assert_allclose(std, np.concatenate([a, b]).std(0))
    # with a prior counted as as many frames as the data, the mean is halfway to the prior's
    mean, _ = both.standardiser(np.full(5, 10.0), np.ones(5), 50.0)
    np.testing.assert_allclose(mean, (np.concatenate([a, b]).mean(0) + 10.0) / 2)


def test_a_long_recording_is_standardised_with_its_own_statistics_a_short_one_mostly_with_the_prior():
    rng = np.random.default_rng(1)
    model = expert_with_prior(rng)
    long = features(rng, 20 * PRIOR_SECONDS, shift=3.0)
    out = model.normalise(long, SpeakerStatistics.of([long]))
    assert abs(out.mel.mean()) < 0.2 and abs(float(out.states.astype(np.float32).mean())) < 0.2
    assert out.states.shape == (3, long.states.shape[1], 384)  # blocks 1..3: the expert reads block 3
    short = features(rng, PRIOR_SECONDS / 5, shift=3.0)
    out = model.normalise(short, SpeakerStatistics.of([short]))
    # the prior weighs five times the clip: mean (2 * 3 + 10 * 0) / 12 = 0.5, second moment (2 * 10 + 10 * 1) / 12,
    # so std 1.5, and the offset of 3 comes out as (3 - 0.5) / 1.5
    assert out.mel.mean() == pytest.approx(2.5 / 1.5, abs=0.1)


def test_a_speaker_with_less_speech_than_the_threshold_is_standardised_with_the_prior_alone():
    rng = np.random.default_rng(6)
    model = VoiceExpert(VoiceConfig(speaker_normalisation=True, own_statistics_seconds=10.0))
    model.set_prior(SpeakerStatistics.of([features(rng, 60.0)]))
    short = features(rng, 3.0, shift=3.0)
    out = model.normalise(short, SpeakerStatistics.of([short]))
    # the prior alone (mean 0, std 1): the clip's offset of 3 stays whole
    assert out.mel.mean() == pytest.approx(3.0, abs=0.1)
    assert float(out.states.astype(np.float32).mean()) == pytest.approx(3.0, abs=0.1)
    # four such clips of the same speaker (12 s) pass the threshold: their own statistics, shrunk, take over
    more = [features(rng, 3.0, shift=3.0) for _ in range(3)]
    out = model.normalise(short, SpeakerStatistics.of([short, *more]))
    assert out.mel.mean() < 1.5


def test_served_states_of_one_block_use_that_blocks_prior():
    rng = np.random.default_rng(2)
    model = expert_with_prior(rng)
    model.prior_states[0, 2] = 5.0  # the population mean of block 3 (the block the expert reads)
    clip = features(rng, 1.0, blocks=1)
    out = model.normalise(clip, SpeakerStatistics.of([clip]))
    assert out.states.shape == clip.states.shape and float(out.states.astype(np.float32).mean()) < -2.0  # about -2.6


def test_predictions_depend_on_who_else_the_speaker_is():
    rng = np.random.default_rng(3)
    model = expert_with_prior(rng).eval()
    clips = [features(rng, 3.0, shift=s) for s in (0.0, 2.0, 2.0)]
    alone = predict_proba(model, clips)
    together = predict_proba(model, clips, speakers=["a", "a", "a"])
    assert alone.shape == together.shape == (3, len(model.config.labels))
    assert not np.allclose(alone, together)
    np.testing.assert_allclose(predict_proba(model, clips, speakers=["0", "1", "2"]), alone, rtol=1e-5)


def test_the_prior_is_saved_with_the_weights(tmp_path):
    rng = np.random.default_rng(4)
    model = expert_with_prior(rng)
    loaded = VoiceExpert.load(model.save(tmp_path / "voice"))
    assert loaded.config.speaker_normalisation
    torch.testing.assert_close(loaded.prior_states, model.prior_states)


def test_the_encoder_read_from_ctranslate2_is_the_shared_checkpoints(shared):
    import whisper

    encoder = load_encoder(encoder_parts("tiny.en"))
    reference = whisper.load_model(str(shared / "models/whisper/tiny.en.pt"), device="cpu").encoder.state_dict()
    mine = encoder.state_dict()
    assert set(mine) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(mine[name], value.float(), rtol=0, atol=0)


def test_a_truncated_or_foreign_model_bin_is_named(tmp_path):
    whole = encoder_parts("tiny.en")[0].read_bytes()
    (tmp_path / "model.bin").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CTranslate2FormatError, match="truncated"):
        read_variables([tmp_path / "model.bin"])
    (tmp_path / "model.bin").write_bytes(b"\x07\x00\x00\x00" + whole[4:100])
    with pytest.raises(CTranslate2FormatError, match="version 7"):
        read_variables([tmp_path / "model.bin"])


def test_a_model_shipped_in_two_parts_reads_and_joins_as_the_whole(shared, tmp_path, monkeypatch):
    """As Whisper base comes (two wheels, each half of model.bin): tiny.en's model.bin cut in two stands in."""
    import encoders.whisper_models as models
    from encoders.asr import FastTranscriber

    whole = models.encoder_parts("tiny.en")[0]
    data = whole.read_bytes()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    halves = [tmp_path / "one/model.bin.part1", tmp_path / "two/model.bin.part2"]
    halves[0].write_bytes(data[: len(data) // 2])
    halves[1].write_bytes(data[len(data) // 2 :])
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (tmp_path / "one" / name).write_bytes((whole.parent / name).read_bytes())
    monkeypatch.setattr(models, "encoder_parts", lambda name: halves)
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))

    for name, value in load_encoder(halves).state_dict().items():
        torch.testing.assert_close(value, load_encoder([whole]).state_dict()[name])
    folder = models.ctranslate2_folder("split")
    assert (folder / "model.bin").read_bytes() == data and not list(folder.glob("*.partial"))
    from fusion.media.decoding import decode

    audio = decode(shared / "data/ravdess-speech-16k/Actor_01/03-01-05-02-01-01-01.flac").audio
    words = " ".join(u.text for u in FastTranscriber(str(folder)).transcribe(audio)).lower()
    assert "kids are talking by the door" in words


def versions_seen(monkeypatch) -> dict:
    """{"versions": ...}: the training views fusion.training.voice.fit hands its training loop, once it has run."""
    from fusion.training import voice as voice_training

    seen = {}
    original = voice_training.VoiceFit.__init__

    def spy(self, versions, *args, **options):
        seen["versions"] = versions
        original(self, versions, *args, **options)

    monkeypatch.setattr(voice_training.VoiceFit, "__init__", spy)
    return seen


def test_training_can_draw_each_recording_standardised_with_its_speaker_and_alone(tmp_path, monkeypatch):
    """As served, a short clip is standardised mostly with the prior: training must show the model that view too."""
    from fusion.training import voice as voice_training

    seen = versions_seen(monkeypatch)
    rng = np.random.default_rng(5)
    clips = [features(rng, 2.0, shift=s) for s in (0.0, 0.0, 3.0, 3.0)]
    voice_training.fit(
        clips,
        ["anger", "neutral", "anger", "neutral"],
        speakers=["a", "a", "b", "b"],
        model_config=VoiceConfig(speaker_normalisation=True, members=1),
        train_config=voice_training.VoiceTrainConfig(epochs=1, batch_size=4, recordings_alone=True),
    )
    together, alone = seen["versions"]
    reference = VoiceExpert(VoiceConfig(speaker_normalisation=True, members=1))
    reference.set_prior(SpeakerStatistics.of(clips))  # fit's prior: the whole training set
    for i, clip in enumerate(clips):
        speaker = clips[:2] if i < 2 else clips[2:]
        np.testing.assert_allclose(together[i].mel, reference.normalise(clip, SpeakerStatistics.of(speaker)).mel)
        np.testing.assert_allclose(alone[i].mel, reference.normalise(clip, SpeakerStatistics.of([clip])).mel)
    assert not np.allclose(together[2].mel, alone[2].mel)


def test_training_alone_under_the_threshold_is_standardised_with_the_prior_alone(monkeypatch):
    """With own_statistics_seconds between one recording's length and a speaker's total, the speakers' view uses
    their own statistics and the recordings-alone view the prior alone, as such a model serves a short clip."""
    from fusion.training import voice as voice_training

    seen = versions_seen(monkeypatch)
    rng = np.random.default_rng(7)
    clips = [features(rng, 2.0, shift=s) for s in (0.0, 0.0, 3.0, 3.0)]
    config = VoiceConfig(speaker_normalisation=True, members=1, own_statistics_seconds=3.0)
    voice_training.fit(
        clips,
        ["anger", "neutral", "anger", "neutral"],
        speakers=["a", "a", "b", "b"],
        model_config=config,
        train_config=voice_training.VoiceTrainConfig(epochs=1, batch_size=4, recordings_alone=True),
    )
    together, alone = seen["versions"]
    reference = VoiceExpert(config)
    reference.set_prior(SpeakerStatistics.of(clips))
    prior_mel = reference.prior_mel.double().numpy()
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(alone[i].mel, (clip.mel - prior_mel[0]) / prior_mel[1], rtol=1e-5, atol=1e-5)
        # each speaker's 4 s pass the threshold: their own statistics, shrunk towards the prior
        speaker = clips[:2] if i < 2 else clips[2:]
        np.testing.assert_allclose(together[i].mel, reference.normalise(clip, SpeakerStatistics.of(speaker)).mel)
    assert float(together[2].mel.mean()) < float(alone[2].mel.mean()) - 0.1
