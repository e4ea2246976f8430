"""The voice expert on real speech: Whisper states, the speech cache, training, resuming, nEMO."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import whisper

from encoders.asr import Transcriber
from encoders.whisper_states import STATE_SECONDS, WhisperStates
from fusion.experts import voice
from fusion.experts.voice import VOICE_LABELS, VoiceConfig, VoiceExpert, predict_proba, to_canonical, voice_label
from fusion.labels import EMOTIONS
from fusion.media.decoding import decode
from fusion.training import loop
from fusion.training import voice as voice_training
from fusion.training.datasets import nemo, ravdess
from fusion.training.voice import SpeechCache, VoiceTrainConfig, fit


@pytest.fixture(scope="module")
def whisper_model(shared):
    return Transcriber().model


@pytest.fixture(scope="module")
def speech_files(shared):
    """60 RAVDESS speech files of actors 01-04, every emotion."""
    examples = [e for e in ravdess(shared / "data/ravdess-speech-16k").examples if e.speaker <= "ravdess:04"]
    return examples[::4]


def test_states_of_a_clip_have_its_shape_and_times(whisper_model, speech_files):
    audio = decode(speech_files[0].path).audio
    states, times = WhisperStates(whisper_model, blocks=2)(audio)
    duration = len(audio) / 16_000
    assert states.shape == (len(times), 384) and states.dtype == np.float32
    assert abs(len(times) - duration / STATE_SECONDS) <= 1  # one state per 20 ms
    np.testing.assert_allclose(np.diff(times), STATE_SECONDS)
    assert 0 < times[0] and times[-1] < duration


def test_states_equal_the_encoder_run_directly_on_a_30_s_window(whisper_model, speech_files):
    """On exactly 30 s, our blocks then Whisper's final norm give what whisper's own encoder gives (to 1e-4)."""
    audio = np.concatenate([decode(e.path).audio for e in speech_files[:12]])[: 30 * 16_000]
    assert len(audio) == 30 * 16_000
    states, _ = WhisperStates(whisper_model, blocks=4)(audio)
    mel = whisper.pad_or_trim(whisper.log_mel_spectrogram(audio), whisper.audio.N_FRAMES)
    with torch.inference_mode():
        expected = whisper_model.encoder(mel[None])[0]
        ours = whisper_model.encoder.ln_post(torch.from_numpy(states))
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=1e-4)


def test_long_audio_is_encoded_in_30_s_windows(whisper_model, speech_files):
    """A 40 s input: its first 30 s give the states of those 30 s alone, the rest those of the last 10 s alone."""
    audio = np.concatenate([decode(e.path).audio for e in speech_files[:14]])[: 40 * 16_000]
    encode = WhisperStates(whisper_model, blocks=2)
    states, times = encode(audio)
    first, _ = encode(audio[: 30 * 16_000])
    rest, _ = encode(audio[30 * 16_000 :])
    np.testing.assert_array_equal(states, np.concatenate([first, rest]))
    assert times[len(first)] == pytest.approx(30 + STATE_SECONDS / 2)


def test_speech_cache_stores_reloads_and_keys_by_whisper_model(shared, speech_files, tmp_path):
    paths = [e.path for e in speech_files[:3]]
    cache = SpeechCache(tmp_path)
    computed, report = cache.build(paths, progress=False)
    assert (report.computed, report.loaded) == (3, 0)
    reloaded, report = SpeechCache(tmp_path).build(paths, progress=False)
    assert (report.computed, report.loaded) == (0, 3)
    for a, b in zip(computed, reloaded):
        np.testing.assert_array_equal(a.mel, b.mel)
        np.testing.assert_array_equal(a.states, b.states)
        assert a.states.shape[0] == voice_training.WHISPER_BLOCKS and a.states.dtype == np.float16
    assert cache._entry(paths[0]) != SpeechCache(tmp_path, whisper_model="base.en")._entry(paths[0])


def test_speech_cache_key_changes_with_the_whisper_blocks(shared, speech_files, tmp_path, monkeypatch):
    cache = SpeechCache(tmp_path)
    before = cache._entry(speech_files[0].path)
    monkeypatch.setattr(voice_training, "WHISPER_BLOCKS", 3)
    assert cache._entry(speech_files[0].path) != before


def test_speech_cache_lists_unreadable_files(shared, tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio")
    features, report = SpeechCache(tmp_path / "cache").build([str(bad), str(tmp_path / "missing.flac")], progress=False)
    assert features == [None, None] and [path for path, _ in report.skipped] == [
        str(bad),
        str(tmp_path / "missing.flac"),
    ]


@pytest.fixture(scope="module")
def speech_features(speech_files, tmp_path_factory):
    features, report = SpeechCache(tmp_path_factory.mktemp("speech")).build(
        [e.path for e in speech_files], progress=False
    )
    assert not report.skipped
    return features, [voice_label(e.dataset, e.label, e.native_label) for e in speech_files]


def test_short_training_lowers_the_loss_and_the_checkpoint_loads(speech_features, tmp_path):
    features, labels = speech_features
    config = VoiceTrainConfig(epochs=6, batch_size=16, augment=False)
    result = fit(features, labels, train_config=config)
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < losses[0]
    result.model.save(tmp_path)
    loaded = VoiceExpert.load(tmp_path)
    np.testing.assert_array_equal(predict_proba(result.model, features[:5]), predict_proba(loaded, features[:5]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_resuming_an_interrupted_run_gives_the_weights_of_an_uninterrupted_one(speech_features, tmp_path, monkeypatch):
    features, labels = speech_features
    validation = (features[:10], labels[:10])
    config = VoiceTrainConfig(epochs=3, batch_size=16, seed=1)
    whole = fit(features, labels, validation=validation, train_config=config, state_dir=tmp_path / "whole")

    # the same run killed right after it saved its second epoch, then resumed
    save_state, saved = loop.Fit._save, []

    def save_then_die_after_two(self):
        save_state(self)
        saved.append(1)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Fit, "_save", save_then_die_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(features, labels, validation=validation, train_config=config, state_dir=tmp_path / "cut")
    monkeypatch.setattr(loop.Fit, "_save", save_state)
    resumed = fit(features, labels, validation=validation, train_config=config, state_dir=tmp_path / "cut", resume=True)
    assert resumed.history == whole.history
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)


def test_each_part_can_be_switched_off(speech_features):
    features, _ = speech_features
    for use_cnn, use_whisper in ((True, False), (False, True)):
        model = VoiceExpert(VoiceConfig(use_cnn=use_cnn, use_whisper=use_whisper))
        assert predict_proba(model, features[:4]).shape == (4, len(VOICE_LABELS))
    with pytest.raises(ValueError, match="needs"):
        VoiceExpert(VoiceConfig(use_cnn=False, use_whisper=False))


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities(speech_features):
    features, _ = speech_features
    model = VoiceExpert(VoiceConfig(members=3)).eval()
    batch = voice.VoiceBatch(features[:4], model.config.whisper_blocks)
    with torch.inference_mode():
        members = model.member_logits(*batch.inputs(torch.device("cpu"))).softmax(-1)
    np.testing.assert_allclose(predict_proba(model, features[:4]), members.mean(0).numpy(), rtol=1e-5, atol=1e-6)


def test_calm_goes_to_neutral_in_the_canonical_view():
    probabilities = np.full((1, len(VOICE_LABELS)), 1 / len(VOICE_LABELS))
    canonical = to_canonical(probabilities)
    assert canonical.shape == (1, len(EMOTIONS)) and canonical.sum() == pytest.approx(1)
    assert canonical[0, EMOTIONS.index("neutral")] == pytest.approx(2 / len(VOICE_LABELS))
    assert (
        voice_label("ravdess", "neutral", "calm") == "calm"
        and voice_label("nemo", "surprise", "surprised") == "surprise"
    )


def test_nemo_adapter_reads_every_file_with_speakers_and_canonical_labels(shared):
    examples = nemo(shared / "data/nemo-pl").examples
    assert len(examples) == 4481
    assert len({e.speaker for e in examples}) == 9 and all(e.speaker.startswith("nemo:") for e in examples)
    assert {e.label for e in examples} == set(EMOTIONS) - {"disgust"}
    assert all(e.modalities == ("audio", "text") and e.text for e in examples)


def test_train_expert_command_lists_its_options():
    run = subprocess.run(
        [sys.executable, "-m", "fusion.cli", "train-expert", "voice", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "--resume" in run.stdout and "--parts" in run.stdout


def test_streamed_chunks_give_the_whole_recordings_states_up_to_window_context(whisper_model, ravdess_clips, tmp_path):
    """States of a 75 s recording read in chunks, against the whole recording's: one per 20 ms of audio either way,
    on the same timeline. Chunks restart the 30 s windows at their own start, so a state's context (the rest of its
    window) differs; the states still agree closely: cosine similarity median 0.93, mean 0.93 (block 3, measured on
    this input), 0.9998 at the start, where both read the same window."""
    from benchmarks.long_input import concatenate
    from encoders.face_detection import FaceDetector
    from fusion.media.streaming import read_chunks

    path = tmp_path / "long.mp4"
    concatenate(ravdess_clips, path, seconds=75)
    encode = WhisperStates(whisper_model, blocks=3)
    whole, whole_times = encode(decode(path).audio)
    pieces = []
    for chunk in read_chunks(path, fps=5.0, detector=FaceDetector(), chunk_s=30.0):
        states, times = encode(chunk.audio)
        pieces.append((states, times + chunk.start))
    streamed = np.concatenate([s for s, _ in pieces])
    streamed_times = np.concatenate([t for _, t in pieces])
    assert len(pieces) >= 3 and abs(len(streamed) - len(whole)) <= len(pieces)
    nearest = np.abs(whole_times[None, :] - streamed_times[:, None]).argmin(1)
    assert np.abs(whole_times[nearest] - streamed_times).max() <= STATE_SECONDS / 2 + 1e-9
    a, b = streamed, whole[nearest]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.median(cosine) > 0.9 and cosine.mean() > 0.9, (np.median(cosine), cosine.mean(), cosine.min())
    assert cosine[:100].min() > 0.99  # the first 2 s: the same first window either way


def test_the_shipped_voice_expert_loads_and_predicts_a_real_clip(speech_features):
    from pathlib import Path

    folder = Path(voice.__file__).resolve().parents[1] / "checkpoints" / "default" / "voice"
    model = VoiceExpert.load(folder)
    assert model.config.whisper_blocks == (3,) and model.config.members == 3 and model.config.labels == VOICE_LABELS
    probabilities = predict_proba(model, speech_features[0][:8])
    assert probabilities.shape == (8, len(VOICE_LABELS))
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)


def test_a_damaged_voice_checkpoint_raises_checkpoint_error(tmp_path):
    from fusion.errors import CheckpointError

    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="not a readable voice expert"):
        VoiceExpert.load(tmp_path)


def test_the_feature_extractor_keeps_the_states_on_the_recordings_timeline(ravdess_clips):
    from fusion.media.features import FeatureExtractor

    extractor = FeatureExtractor(whisper_blocks=3)
    try:
        features = extractor(ravdess_clips[0])
        chunks = list(extractor.stream(ravdess_clips[0], background=False))
    finally:
        extractor.close()
    assert features.whisper_states.shape == (len(features.whisper_times), 384)
    assert 0 < features.whisper_times[0] and features.whisper_times[-1] < features.duration
    assert "whisper_states" in features.timings
    streamed = np.concatenate([c.whisper_states for c in chunks])
    np.testing.assert_allclose(streamed, features.whisper_states, atol=1e-5)  # one chunk: the same window


def test_a_segment_read_with_its_context_gives_the_voice_what_its_benchmark_reads(speech_features):
    """Train/serve parity: the voice expert reads a segment with voice_context_s of the recording on each side; an
    utterance with pauses of at most that around it in its recording is then read whole, as training and the
    benchmark read the file (tiny random model, shapes and masking only)."""
    from alignment import Segment
    from encoders.audio import FRAME_SECONDS
    from fusion.experts.bundle import ExpertBundle
    from fusion.media.features import RecordingFeatures

    features, _ = speech_features
    torch.manual_seed(0)
    model = VoiceExpert(VoiceConfig(dim=16, members=1)).eval()
    bundle = ExpertBundle(voice=model, text=None, face=None, voice_context_s=1.5)
    for f in features[:4]:
        duration = len(f.mel) * FRAME_SECONDS
        n = f.states.shape[1]
        piece = RecordingFeatures(
            path="x",
            duration=duration,
            mel=f.mel,
            utterances=[],
            face_crops=None,
            face_times=None,
            face_present=None,
            whisper_states=f.states[2].astype(np.float32),
            whisper_times=(np.arange(n) + 0.5) * STATE_SECONDS,
            speech=None,
        )
        segment = Segment(1.0, duration - 1.0)  # the speech of a RAVDESS take, about 1 s in from either end
        served = bundle.segment_probabilities(piece, [segment])["audio"][0]
        np.testing.assert_allclose(served, to_canonical(predict_proba(model, [f]))[0], atol=1e-5)
        bundle.voice_context_s = 0.0  # without context: the segment alone, another input
        assert np.abs(bundle.segment_probabilities(piece, [segment])["audio"][0] - served).max() > 1e-4
        bundle.voice_context_s = 1.5


def test_a_normalising_voice_is_served_what_its_benchmark_reads_and_a_recording_adds_up_its_speech(speech_features):
    """Train/serve parity with speaker normalisation: a recording served as one piece is standardised with its own
    statistics, as predict_proba standardises a recording alone; later pieces add to the recording's statistics
    (tiny random model, shapes and arithmetic only)."""
    from alignment import Segment
    from encoders.audio import FRAME_SECONDS
    from fusion.experts.bundle import ExpertBundle
    from fusion.experts.voice import SpeakerStatistics
    from fusion.media.features import RecordingFeatures

    features, _ = speech_features
    torch.manual_seed(0)
    model = VoiceExpert(VoiceConfig(dim=16, members=1, speaker_normalisation=True)).eval()
    model.set_prior(SpeakerStatistics.of(features))
    bundle = ExpertBundle(voice=model, text=None, face=None, voice_context_s=1.5)
    statistics: list = []
    for k, f in enumerate(features[:2]):
        duration = len(f.mel) * FRAME_SECONDS
        n = f.states.shape[1]
        piece = RecordingFeatures(
            path="x",
            duration=duration,
            mel=f.mel,
            utterances=[],
            face_crops=None,
            face_times=None,
            face_present=None,
            whisper_states=f.states[2].astype(np.float32),
            whisper_times=(np.arange(n) + 0.5) * STATE_SECONDS,
            speech=None,
        )
        alone = bundle.segment_probabilities(piece, [Segment(1.0, duration - 1.0)])["audio"][0]
        np.testing.assert_allclose(alone, to_canonical(predict_proba(model, [f]))[0], atol=2e-3)
        bundle.segment_probabilities(piece, [Segment(1.0, duration - 1.0)], statistics)
        assert statistics[0].mel.count == sum(len(g.mel) for g in features[: k + 1])
