"""Modality ablation of an experts bundle (fusion.training.ablation): pooling over subsets, out-of-fold
outputs in place of an expert that heard the test speakers, and the command on the real clips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusion.cli import main
from fusion.experts.bundle import ExpertBundle
from fusion.experts.late_fusion import LateFusion
from fusion.labels import EMOTIONS, MODALITIES
from fusion.training.ablation import (
    AblationConfig,
    ExpertOutputs,
    RecordingOutputs,
    run_expert_ablation,
)
from fusion.training.datasets import Example
from fusion.training.out_of_fold import read_out_of_fold, recording_key

C = len(EMOTIONS)


def test_a_ravdess_clip_and_its_audio_only_twin_share_a_key():
    assert recording_key("a/01-01-06-01-02-01-09.mp4") == recording_key("b/03-01-06-01-02-01-09.flac")
    assert recording_key("03-01-06-01-02-01-09.flac") != recording_key("03-01-06-01-02-01-10.flac")
    assert recording_key("interviews/anna.mp4") == "anna"


def _one_hot(index: int, sharp: float = 0.9) -> np.ndarray:
    p = np.full(C, (1 - sharp) / (C - 1))
    p[index] = sharp
    return p


def _outputs(rng: np.random.Generator, label: int) -> RecordingOutputs:
    """Two segments: audio knows the label, text is noise, video is absent."""
    return RecordingOutputs(
        np.array([1.0, 2.0]),
        {
            "audio": np.stack([_one_hot(label), _one_hot(label)]),
            "text": rng.dirichlet(np.full(C, 5.0), 2),  # mild noise: no strong opinion
            "video": np.full((2, C), np.nan),
        },
    )


@pytest.fixture
def synthetic():
    """24 examples of 6 speakers, 3 classes; a bundle without loaded experts (only its late fusion runs here)."""
    rng = np.random.default_rng(0)
    labels = [i % 3 for i in range(24)]
    examples = [
        Example(f"03-01-0{1 + y}-01-01-01-{1 + i % 6:02d}.wav", EMOTIONS[y], "x", f"s{i % 6}", "ravdess", ("audio",))
        for i, y in enumerate(labels)
    ]
    outputs = [_outputs(rng, y) for y in labels]
    bundle = ExpertBundle(voice=object(), text=object(), face=None, late_fusion=LateFusion())
    return examples, outputs, bundle


def test_the_subset_with_the_informative_expert_is_right_and_the_other_is_not(synthetic):
    examples, outputs, bundle = synthetic
    ablation = run_expert_ablation(examples, outputs, bundle, config=AblationConfig(folds=3))
    assert ablation.modalities == ("audio", "text")  # the bundle has no face expert, the data no video
    assert ablation.subsets == [("audio",), ("text",), ("audio", "text")]
    accuracy = {s: (ablation.predicted["experts", s][0] == ablation.true).mean() for s in ablation.subsets}
    assert accuracy["audio",] == 1.0
    assert accuracy["text",] < 0.6
    assert accuracy["audio", "text"] == 1.0  # the sharp expert outweighs the noise
    assert len(ablation.runs) == 3 * 3  # subsets x folds, one seed


def test_out_of_fold_outputs_replace_the_expert_per_seed(synthetic):
    examples, outputs, bundle = synthetic
    keys = [recording_key(e.path) for e in examples]
    wrong = {k: _one_hot(6) for k in keys}  # seed 1 says neutral for everything
    right = {k: _one_hot(EMOTIONS.index(e.label)) for k, e in zip(keys, examples)}
    ablation = run_expert_ablation(
        examples, outputs, bundle, config=AblationConfig(folds=2), out_of_fold={"audio": {0: right, 1: wrong}}
    )
    audio = ablation.predicted["experts", ("audio",)]
    assert ablation.seeds == (0, 1)
    assert (audio[0] == ablation.true).all() and (audio[1] == EMOTIONS.index("neutral")).all()
    with pytest.raises(ValueError, match="different seeds"):
        run_expert_ablation(
            examples, outputs, bundle, config=AblationConfig(folds=2), out_of_fold={"audio": {0: right}, "text": {}}
        )


def test_a_recording_without_the_subset_gets_the_pooled_prior(synthetic):
    examples, outputs, bundle = synthetic
    outputs = [RecordingOutputs(o.durations, {**o.probabilities, "text": np.full((2, C), np.nan)}) for o in outputs]
    only_first = np.stack([_one_hot(0), np.full(C, np.nan)])
    outputs[0] = RecordingOutputs(outputs[0].durations, {**outputs[0].probabilities, "text": only_first})
    prior = [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.7]
    bundle.late_fusion = LateFusion(priors={"text": prior})
    ablation = run_expert_ablation(examples, outputs, bundle, config=AblationConfig(folds=2))
    text = ablation.predicted["experts", ("text",)][0]
    assert text[0] == 0 and (text[1:] == EMOTIONS.index("neutral")).all()


def test_out_of_fold_files_are_read_by_seed(tmp_path):
    for seed in (0, 1):
        for fold in (0, 1):
            names = np.array([f"x/03-01-01-01-01-0{fold + 1}-0{seed + 1}.flac"])
            np.savez(tmp_path / f"both-seed{seed}-fold{fold}.npz", paths=names, probabilities=_one_hot(2)[None])
    read = read_out_of_fold(tmp_path)
    assert sorted(read) == [0, 1] and all(len(outputs) == 2 for outputs in read.values())
    np.savez(
        tmp_path / "again-seed0-fold0.npz",
        paths=np.array(["03-01-01-01-01-01-01.flac"]),
        probabilities=_one_hot(2)[None],
    )
    with pytest.raises(ValueError, match="second output"):
        read_out_of_fold(tmp_path)
    with pytest.raises(FileNotFoundError, match="no out-of-fold"):
        read_out_of_fold(tmp_path / "missing")


def test_ablate_experts_on_the_real_clips(shared, tmp_path):
    """The shipped bundle on the 12 real clips: every subset of its three experts, the clip without audio counted."""
    out = tmp_path / "ablation"
    code = main(
        ["ablate", f"ravdess={shared / 'data/av-clips'}", "--folds", "4", "--cache", str(tmp_path / "c")]
        + ["--out", str(out)]
    )
    assert code == 0
    record = json.loads((out / "ablation.json").read_text())
    assert record["kind"] == "experts" and record["data"]["examples"] == 12
    assert record["data"]["modalities"] == list(MODALITIES)
    assert record["data"]["with_modality"]["audio"] == 11  # one clip has no audio track
    assert [row["subset"] for row in record["rows"]] == [
        "audio",
        "text",
        "video",
        "audio+text",
        "audio+video",
        "text+video",
        "audio+text+video",
    ]
    assert all(len(seed_row) == 12 for key, rows in record["predictions"].items() if ":" in key for seed_row in rows)
    assert "experts" in (out / "ablation.md").read_text() and (out / "ablation.png").stat().st_size > 0


def test_a_recording_with_a_transcript_is_keyed_by_its_media_and_a_transcript_row_by_its_text(tmp_path):
    bundle = ExpertBundle(voice=None, text=object(), face=None, id="0123")
    outputs = ExpertOutputs(bundle, tmp_path)
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    first.write_bytes(b"one recording")
    second.write_bytes(b"another recording")

    def example(path, modalities=("audio", "text")):
        return Example(str(path), "anger", "anger", "s1", "csv", modalities, text="the same words")

    assert outputs._entry(example(first)) != outputs._entry(example(second))
    assert outputs._entry(example(first, ("text",))) == outputs._entry(example(second, ("text",)))


@pytest.mark.parametrize("spec", ["speech=.", "audio=", "audio=/nowhere"])
def test_a_malformed_out_of_fold_option_is_a_usage_error(spec, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "ravdess=x", "--out-of-fold", spec, "--cache", "c", "--out", "o"])
    assert exit_.value.code == 2
    assert "--out-of-fold" in capsys.readouterr().err
