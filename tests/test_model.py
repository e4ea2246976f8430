"""Fusion model shapes, masking and checkpoints, on a tiny randomly initialised model (no trained weights)."""

from __future__ import annotations

import json

import pytest
import torch

from alignment import Stream
from encoders.audio import FRAME_SECONDS, N_MELS
from encoders.face_detection import FACE_SIZE
from fusion import checkpoint as checkpoints
from fusion.errors import CheckpointError
from fusion.model import FusionBatch, FusionConfig, FusionModel
from fusion.training.train import drop_modalities

TINY = FusionConfig(dim=32, heads=2, layers=2, audio_dim=16, text_dim=8, face_dim=16, dropout=0.0)


def tiny_random_model(seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(TINY).eval()


def example(seconds: float, *, words: int, faces: int, face_present: list[bool] | None = None) -> dict[str, Stream]:
    frames = int(seconds / FRAME_SECONDS)
    present = torch.tensor(face_present if face_present is not None else [True] * faces)
    return {
        "audio": Stream(
            torch.randn(frames, N_MELS), torch.arange(frames) * FRAME_SECONDS, torch.ones(frames, dtype=torch.bool)
        )
        if frames
        else Stream.empty(N_MELS),
        "text": Stream(
            torch.randn(words, 8), torch.linspace(0.2, seconds - 0.2, words), torch.ones(words, dtype=torch.bool)
        ),
        "video": Stream(torch.rand(faces, 1, FACE_SIZE, FACE_SIZE), torch.linspace(0, seconds - 0.1, faces), present),
    }


def test_logits_shape():
    model = tiny_random_model()
    batch = FusionBatch.collate(
        [example(3.0, words=5, faces=15), example(2.0, words=0, faces=10)], [(0, 3.0), (0, 2.0)]
    )
    assert model(batch).shape == (2, len(TINY.labels))


def test_padded_and_absent_values_do_not_reach_the_output():
    model = tiny_random_model()
    examples = [
        example(3.3, words=6, faces=16, face_present=[True] * 10 + [False] * 6),
        example(1.7, words=2, faces=9, face_present=[False] * 9),  # no face at all
    ]
    batch = FusionBatch.collate(examples, [(0, 3.3), (0, 1.7)])
    with torch.no_grad():
        reference = model(batch)
        for stream in batch.streams.values():
            hidden = ~stream.mask
            stream.values[hidden] = torch.randn_like(stream.values[hidden]) * 100
        assert torch.equal(model(batch), reference)


def test_an_example_gives_the_same_output_alone_and_batched():
    model = tiny_random_model()
    short, long = example(1.2, words=3, faces=6), example(4.0, words=9, faces=20)
    with torch.no_grad():
        batched = model(FusionBatch.collate([short, long], [(0, 1.2), (0, 4.0)]))
        alone = model(FusionBatch.collate([short], [(0, 1.2)]))
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-5)


def test_a_dropped_modality_equals_an_absent_one():
    model = tiny_random_model()
    full = example(2.0, words=4, faces=10)
    without_video = dict(full, video=Stream.empty(1, FACE_SIZE, FACE_SIZE))
    masked_video = dict(
        full, video=Stream(full["video"].values, full["video"].times, torch.zeros(10, dtype=torch.bool))
    )
    with torch.no_grad():
        a = model(FusionBatch.collate([without_video], [(0, 2.0)]))
        b = model(FusionBatch.collate([masked_video], [(0, 2.0)]))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_modality_dropout_keeps_at_least_one_present_modality():
    batch = FusionBatch.collate([example(2.0, words=3, faces=10) for _ in range(64)], [(0, 2.0)] * 64)
    dropped = drop_modalities(batch, 0.9, generator=torch.Generator().manual_seed(0))
    kept = torch.stack([s.mask.any(1) for s in dropped.streams.values()], 1)
    assert kept.any(1).all()
    assert (kept.sum(1) < 3).any()


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_random_model(seed=3)
    ckpt = checkpoints.Checkpoint(
        model=model, encoders=checkpoints.EncoderNames(whisper="tiny.en", text="bert"), fps=5.0
    )
    folder = checkpoints.save(ckpt, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["labels"] == list(TINY.labels) and config["format_version"] == checkpoints.FORMAT_VERSION
    loaded = checkpoints.load(folder)
    assert loaded.encoders.whisper == "tiny.en" and loaded.fps == 5.0 and len(loaded.id) == 16
    batch = FusionBatch.collate([example(2.5, words=4, faces=12)], [(0, 2.5)])
    with torch.no_grad():
        assert torch.equal(model(batch), loaded.model(batch))


def test_checkpoint_errors_are_specific(tmp_path):
    with pytest.raises(CheckpointError, match="not a fusion checkpoint"):
        checkpoints.load(tmp_path)
    folder = checkpoints.save(
        checkpoints.Checkpoint(model=tiny_random_model(), encoders=checkpoints.EncoderNames("a", "b"), fps=5.0),
        tmp_path / "c",
    )
    config = json.loads((folder / "config.json").read_text())
    config["features"]["audio"]["n_mels"] = 80
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="feature parameters"):
        checkpoints.load(folder)
    config["features"]["audio"]["n_mels"] = N_MELS
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot load weights"):
        checkpoints.load(folder)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: [1], "expected a JSON object, found list"),
        (lambda c: {k: v for k, v in c.items() if k != "features"}, "'features' is missing"),
        (lambda c: c | {"model": c["model"] | {"depth": 4}}, r"unknown model settings \[.depth.\]"),
        (lambda c: c | {"model": "tiny"}, "'model' must be a JSON dict, found str"),
        (lambda c: c | {"model": c["model"] | {"dim": "wide"}}, "do not build a model"),
        (lambda c: c | {"encoders": {"whisper": "tiny.en"}}, "do not build a model"),
    ],
)
def test_malformed_configs_are_checkpoint_errors_naming_the_file(tmp_path, damage, message):
    folder = checkpoints.save(
        checkpoints.Checkpoint(model=tiny_random_model(), encoders=checkpoints.EncoderNames("a", "b"), fps=5.0),
        tmp_path / "c",
    )
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(damage(config)))
    with pytest.raises(CheckpointError, match=message) as error:
        checkpoints.load(folder)
    assert str(folder) in str(error.value)


def test_a_binary_config_is_a_checkpoint_error(tmp_path):
    folder = checkpoints.save(
        checkpoints.Checkpoint(model=tiny_random_model(), encoders=checkpoints.EncoderNames("a", "b"), fps=5.0),
        tmp_path / "c",
    )
    (folder / "config.json").write_bytes(bytes(range(256)))
    with pytest.raises(CheckpointError, match="not a JSON text file"):
        checkpoints.load(folder)
