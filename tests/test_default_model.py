"""The shipped default model (an experts bundle): package data, every real clip, and accuracy guards on real data
that fail if its weights regress (random weights score near chance on each)."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import fusion
from fusion.experts import face as face_expert
from fusion.experts.bundle import BUNDLE_FILE, FOLDERS, ExpertBundle
from fusion.labels import EMOTIONS
from fusion.serving.predictor import DEFAULT_CHECKPOINT
from fusion.training.datasets import image_folder, meld
from fusion.training.metrics import score

MAX_BYTES = 10_000_000  # the shipped model's size limit


@pytest.fixture(scope="module")
def default_predictor(shared):
    return fusion.load()


@pytest.fixture(scope="module")
def bundle(shared):
    return ExpertBundle.load(DEFAULT_CHECKPOINT)


def test_default_checkpoint_is_package_data_small_and_names_its_parts():
    config = json.loads((DEFAULT_CHECKPOINT / BUNDLE_FILE).read_text())
    assert config["kind"] == "experts" and config["labels"] == list(EMOTIONS)
    assert set(config["late_fusion"]["temperatures"]) <= set(FOLDERS) and set(config["late_fusion"]["weights"])
    assert set(config["experts"]) == {"voice", "text", "face"}, "the config names every stage's source"
    files = [p for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    assert {p.suffix for p in files} <= {".json", ".safetensors"}, "no pickles, no training state"
    text = json.loads(next((DEFAULT_CHECKPOINT / "text").rglob("config.json")).read_text())
    assert text["base_model"] == "sentence-transformers/all-MiniLM-L6-v2", "base models are referenced by name"


def test_default_model_predicts_every_clip(default_predictor, shared, monkeypatch):
    monkeypatch.delenv("FUSION_CHECKPOINT", raising=False)
    clips = sorted((shared / "data/av-clips").rglob("*.mp4"))
    flac = next((shared / "data/ravdess-speech-16k/Actor_02").glob("*.flac"))
    assert len(clips) == 12
    for path in [*clips, flac]:
        result = default_predictor.predict(path)
        probabilities = result.timeline[list(EMOTIONS)].to_numpy()
        known = result.timeline.modalities.str.len() > 0  # a pause with no face: nothing is known there, all null
        assert known.any() and np.isfinite(probabilities[known]).all()
        assert np.isnan(probabilities[~known]).all() and (result.timeline.label[~known] == "").all()
        np.testing.assert_allclose(probabilities[known].sum(axis=1), 1.0, atol=1e-5)
        assert result.summary.label in EMOTIONS
        assert set(",".join(result.timeline.modalities[known]).split(",")) <= {"audio", "text", "video"}
    assert result.summary.modalities == ("audio", "text"), "the flac has no video"
    assert "video" not in ",".join(result.timeline.modalities)


def test_predict_without_checkpoint_argument_uses_the_default(shared, ravdess_clips, monkeypatch):
    monkeypatch.delenv("FUSION_CHECKPOINT", raising=False)
    result = fusion.predict(ravdess_clips[0])
    assert result.summary.label in EMOTIONS


def test_accuracy_guard_faces(bundle, shared):
    """300 FER2013 PublicTest faces (every 12th) through the bundle's face path (its views and precision): the
    published figure is 68.7% (benchmarks/results/default_model); random weights score about 25% (the majority
    class)."""
    examples = image_folder(shared / "data/fer2013/validation").examples[::12][:300]
    raw = bundle.face_probabilities(face_expert.read_faces([e.path for e in examples]))
    predicted = bundle.fuse({"video": raw}).argmax(1)
    accuracy = np.mean([EMOTIONS[k] == e.label for k, e in zip(predicted, examples)])
    assert accuracy > 0.63, accuracy


def test_accuracy_guard_text(bundle, shared):
    """200 MELD dev utterances (every 5th): the published weighted F1 on all of dev is in
    benchmarks/results/default_model (TF-IDF + LR: 42); always answering neutral gives about 30."""
    examples = meld(shared / "data/meld-text/dev_sent_emo.csv").examples[::5][:200]
    probabilities = bundle.fuse({"text": bundle.text.predict_proba([e.text for e in examples])})
    scores = score([e.label for e in examples], [EMOTIONS[k] for k in probabilities.argmax(1)], EMOTIONS)
    assert scores.weighted_f1 > 0.50, scores


def test_accuracy_guard_voice_on_speech_it_trained_on(default_predictor, shared):
    """A regression guard, not a generalisation figure: the shipped voice expert trained on every RAVDESS speaker,
    so 24 of its training files (actor 01) must come out right nearly always through fusion.predict (its held-out
    figure is its recipe's, benchmarks/results/voice_expert/ravdess_ensemble). Random weights: about 1 in 7."""
    from fusion.labels import ravdess_label

    files = sorted((shared / "data/ravdess-speech-16k/Actor_01").glob("*.flac"))[::2][:24]
    right = [default_predictor.predict(f).summary.label == ravdess_label(f.name) for f in files]
    assert np.mean(right) > 0.7, np.mean(right)


def test_fusion_bundle_reuses_trained_experts_and_calibrates_them(shared, tmp_path, ravdess_clips):
    """The staged path's last stage: `fusion bundle` takes the three experts by path (no retraining), fits each
    one's temperature on its own validation share (here of 400 FER2013 and 600 MELD training examples), and the
    result predicts a real clip with all three modalities."""
    import subprocess
    import sys

    out = tmp_path / "bundle"
    fer, meld_csv = tmp_path / "fer", tmp_path / "meld.csv"
    for example in image_folder(shared / "data/fer2013/train").examples[::70]:
        (fer / example.native_label).mkdir(parents=True, exist_ok=True)
        (fer / example.native_label / Path(example.path).name).symlink_to(example.path)
    with open(shared / "data/meld-text/train_sent_emo.csv", newline="", encoding="utf-8") as source:
        rows = list(itertools.islice(csv.reader(source), 601))  # the header and 600 utterances
    with open(meld_csv, "w", newline="", encoding="utf-8") as target:
        csv.writer(target).writerows(rows)
    command = [sys.executable, "-m", "fusion.cli", "bundle", "--out", str(out)]
    command += ["--voice", str(DEFAULT_CHECKPOINT / "voice"), "--face", str(DEFAULT_CHECKPOINT / "face")]
    command += ["--text", *sorted(str(p.parent) for p in (DEFAULT_CHECKPOINT / "text").rglob("model.safetensors"))]
    command += ["--face-data", f"fer2013={fer}", "--text-data", f"meld={meld_csv}", "--face-dtype", "int8"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    config = json.loads((out / BUNDLE_FILE).read_text())
    temperatures = config["late_fusion"]["temperatures"]
    assert set(temperatures) == {"video", "text", "audio"} and temperatures["audio"] == 1.0, "the voice's is given"
    assert all(0.05 < t < 20 for t in temperatures.values())
    assert config["experts"]["voice"] == str(DEFAULT_CHECKPOINT / "voice"), "the stage given by path is named"
    assert config["experts"]["face"] == str(DEFAULT_CHECKPOINT / "face"), "the source, not the int8 scratch copy"
    assert json.loads((out / "face" / "config.json").read_text())["dtype"] == "int8"
    assert not (out / ".face").exists()
    result = fusion.load(out).predict(ravdess_clips[0])
    assert result.summary.modalities == ("audio", "text", "video") and result.summary.label in EMOTIONS


def test_the_default_model_loads_no_second_text_model(default_predictor, ravdess_clips):
    """The bundle's text expert reads the words; the feature extractor holds no text model of its own."""
    from encoders.text import WordEncoder

    assert not [name for name, value in vars(default_predictor.extractor).items() if isinstance(value, WordEncoder)]
    features = default_predictor.extractor(ravdess_clips[0])
    assert features.modalities == ("audio", "text", "video")


def test_recipe_runs_every_stage_once_and_reuses_an_expert_given_by_path(shared, tmp_path, ravdess_clips):
    """`fusion bundle --recipe` on a small real subset: the voice and text stages train (1 epoch on 16 RAVDESS files,
    2 on 300 MELD utterances), the face stage is replaced by the shipped face given by path (not trained), and the
    bundle records the recipe. Run again, it finds the stages done and trains nothing."""
    import subprocess
    import sys

    from fusion.training.recipe import DONE_SUFFIX

    speech = tmp_path / "ravdess" / "Actor_01"
    speech.mkdir(parents=True)
    for path in sorted((shared / "data/ravdess-speech-16k/Actor_01").glob("*.flac"))[::4][:16]:
        (speech / path.name).symlink_to(path)
    fer, meld_csv = tmp_path / "fer", tmp_path / "meld.csv"
    for example in image_folder(shared / "data/fer2013/train").examples[::140]:
        (fer / example.native_label).mkdir(parents=True, exist_ok=True)
        (fer / example.native_label / Path(example.path).name).symlink_to(example.path)
    with open(shared / "data/meld-text/train_sent_emo.csv", newline="", encoding="utf-8") as source:
        rows = list(itertools.islice(csv.reader(source), 301))
    with open(meld_csv, "w", newline="", encoding="utf-8") as target:
        csv.writer(target).writerows(rows)
    recipe = {
        "stages": [
            {
                "name": "voice",
                "modality": "audio",
                "arguments": ["--data", f"ravdess={speech.parent}", "--cache", "{work}/cache", "--epochs", "1"],
            },
            {"name": "text", "modality": "text", "arguments": ["--data", f"meld={meld_csv}", "--epochs", "2"]},
            {"name": "face", "modality": "face", "arguments": ["--data", "fer2013={shared}/data/fer2013/train"]},
        ],
        "bundle": {
            "voice": "voice",
            "text": "text",
            "face": "face",
            "voice_data": [f"ravdess={speech.parent}"],
            "text_data": f"meld={meld_csv}",
            "face_data": f"fer2013={fer}",
        },
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    work, out = tmp_path / "work", tmp_path / "model"
    command = [sys.executable, "-m", "fusion.cli", "bundle", "--recipe", str(tmp_path / "recipe.json")]
    command += ["--work", str(work), "--out", str(out), "--face", str(DEFAULT_CHECKPOINT / "face")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in work.glob(f"*{DONE_SUFFIX}")) == [f"text{DONE_SUFFIX}", f"voice{DONE_SUFFIX}"]
    assert not (work / "face").exists(), "the face given by path is not trained"
    config = json.loads((out / BUNDLE_FILE).read_text())
    assert config["recipe"]["stages"] == recipe["stages"]
    assert config["experts"]["face"] == str(DEFAULT_CHECKPOINT / "face")
    assert config["experts"]["voice"] == str(work / "voice")
    result = fusion.load(out).predict(ravdess_clips[0])
    assert result.summary.modalities == ("audio", "text", "video")

    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done before") == 2 and "train-expert" not in again.stdout


def test_the_shipped_models_recipe_keeps_the_voice_temperature_it_was_given():
    """`fusion bundle --recipe fusion/checkpoints/default` rebuilds the shipped model: its recipe carries the voice
    temperature that calibration records (given to `fusion bundle`, not fitted by it)."""
    from fusion.training.recipe import read_recipe

    recorded = json.loads((DEFAULT_CHECKPOINT / BUNDLE_FILE).read_text())["calibration"]["audio"]["temperature"]
    assert read_recipe(DEFAULT_CHECKPOINT)["bundle"]["voice_temperature"] == recorded
