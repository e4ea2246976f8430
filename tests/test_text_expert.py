"""The text expert: a short real LoRA fine-tuning on MELD rows, its checkpoint, loading and resuming."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from encoders.asr import Utterance, Word
from encoders.loading import DEFAULT_TEXT_MODEL, TEXT_ENV, ModelNotFoundError
from encoders.text import WordEncoder
from fusion.cli import main as fusion_main
from fusion.experts import text as expert
from fusion.labels import EMOTIONS
from fusion.storage import CONFIG_FILE, WEIGHTS_FILE
from fusion.training import loop
from fusion.training import text as training
from fusion.training.datasets import meld

ROWS = 240  # MELD train rows: dialogues 0-22, about 2 s per epoch on one core
CONFIG = expert.TextExpertConfig(epochs=2, batch_size=16, validation_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def examples(shared: Path) -> list:
    return meld(shared / "data/meld-text/train_sent_emo.csv").examples[:ROWS]


@pytest.fixture(scope="module")
def trained(examples, tmp_path_factory) -> training.TrainResult:
    return training.train_text_expert(examples, tmp_path_factory.mktemp("expert"), CONFIG, log=lambda _: None)


def utterances(examples) -> list[Utterance]:
    """The examples' texts as Whisper-like utterances (times do not matter to the embeddings)."""
    return [Utterance(e.text, 0.0, 1.0, tuple(Word(w, 0.0, 1.0) for w in e.text.split())) for e in examples]


def cross_entropy(probabilities: np.ndarray, examples) -> float:
    labels = [EMOTIONS.index(e.label) for e in examples]
    return float(-np.log(probabilities[np.arange(len(labels)), labels]).mean())


def test_fine_tuning_lowers_the_loss(trained, examples):
    from encoders.text import _load_bert

    torch.manual_seed(CONFIG.seed)
    tokenizer, bert = _load_bert(expert.choose_model(None, env_var=TEXT_ENV, default=DEFAULT_TEXT_MODEL))
    untrained = training.build_model(bert, CONFIG)
    items = training.items_from_examples(examples, context=False)
    encoded = expert.encode(tokenizer, items, CONFIG.max_tokens)
    before = expert.predict_logits(untrained, encoded, tokenizer.pad_token_id, torch.device("cpu"), "fp32")
    after = expert.TextExpert.load(trained.out).predict_items(items)
    assert cross_entropy(after, examples) < cross_entropy(before.softmax(-1).numpy(), examples) - 0.1
    assert trained.history[1]["train_loss"] < trained.history[0]["train_loss"]


def test_round_trip_gives_the_same_embeddings_and_probabilities(trained, examples):
    first, second = expert.TextExpert.load(trained.out), expert.TextExpert.load(trained.out)
    spoken = utterances(examples[:20])
    words = first.words.encode(spoken)
    assert words.shape == (sum(len(u.words) for u in spoken), first.words.dim)  # one row per word
    assert torch.equal(words, second.words.encode(spoken))
    # The adapters change the embeddings: the tuned encoder is not the base one.
    assert not torch.allclose(words, WordEncoder().encode(spoken), atol=1e-3)
    # Unmerged adapters (as trained) and merged ones (as loaded) give the same word vectors.
    from encoders.text import _load_bert

    _, bert = _load_bert(first.words.name)
    meta, weights = expert.read_checkpoint(trained.out)
    model = training.build_model(bert, expert.TextExpertConfig(**meta["config"]))
    model.load_state_dict(weights, strict=False)
    unmerged = WordEncoder()
    unmerged.model = model.encoder.eval()
    torch.testing.assert_close(unmerged.encode(spoken), words, atol=1e-5, rtol=1e-4)
    # The utterance prediction is the head over the mean of its words, by either path.
    through_words = first.predict_utterances(spoken)
    np.testing.assert_allclose(first.predict_proba([u.text for u in spoken]), through_words, atol=1e-5)
    np.testing.assert_array_equal(through_words, second.predict_utterances(spoken))
    assert np.allclose(through_words.sum(1), 1)


def test_checkpoint_holds_adapters_and_head_only(trained):
    weights = load_file(trained.out / WEIGHTS_FILE)
    assert set(weights) >= {"head.weight", "head.bias"}
    assert all(k.startswith("head.") or ".lora_" in k for k in weights), sorted(weights)[:5]
    assert (trained.out / WEIGHTS_FILE).stat().st_size < 5_000_000
    meta = json.loads((trained.out / CONFIG_FILE).read_text())
    assert meta["base_model"] == DEFAULT_TEXT_MODEL  # the shared copy is recorded by its portable name
    assert meta["lora"] == {
        "r": CONFIG.lora_r,
        "alpha": CONFIG.lora_alpha,
        "dropout": 0.1,
        "targets": list(CONFIG.lora_targets),
    }


def test_missing_base_model_names_the_variable(trained, monkeypatch):
    monkeypatch.setenv(TEXT_ENV, "/nonexistent/all-MiniLM-L6-v2")
    with pytest.raises(ModelNotFoundError, match=TEXT_ENV):
        expert.TextExpert.load(trained.out)


def test_resume_after_an_interrupted_epoch_continues_from_saved_state(trained, examples, tmp_path, monkeypatch):
    real_batches = training.TextFit.batches

    def interrupted(self, epoch):
        for number, batch in enumerate(real_batches(self, epoch)):
            if epoch == 2 and number == 2:
                raise KeyboardInterrupt  # killed part-way through the second epoch
            yield batch

    monkeypatch.setattr(training.TextFit, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train_text_expert(examples, tmp_path, CONFIG, log=lambda _: None)
    monkeypatch.setattr(training.TextFit, "batches", real_batches)
    resumed = training.train_text_expert(examples, tmp_path, CONFIG, resume=True, log=lambda _: None)

    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in trained.history]
    final = torch.load(tmp_path / loop.STATE_FILE, weights_only=True)["weights"]
    uninterrupted = torch.load(trained.out / loop.STATE_FILE, weights_only=True)["weights"]
    assert final.keys() == uninterrupted.keys()
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final)


def test_command_line_trains_and_resumes(shared, tmp_path, capsys):
    csv = tmp_path / "train_sent_emo.csv"  # MELD's name: the split is read from it
    lines = (shared / "data/meld-text/train_sent_emo.csv").read_text(encoding="utf-8").splitlines()[:81]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    command = ["train-expert", "text", "--data", f"meld={csv}", "--out", str(tmp_path / "out"), "--epochs", "1"]
    assert fusion_main(command) == 0
    assert fusion_main([*command, "--resume"]) == 0  # nothing left to train: the saved epoch is kept
    assert "epoch 1 kept" in capsys.readouterr().out
    assert expert.TextExpert.load(tmp_path / "out").predict_proba(["Oh my God!"]).shape == (1, len(EMOTIONS))


def test_a_distilled_student_follows_its_teacher_closer_than_the_labels_alone(trained, examples, tmp_path):
    """distill_weight 1: the student learns from the teacher's probabilities only; on the training rows it ends
    nearer the teacher (KL divergence) than a student of the same seed trained on the labels."""
    student_config = dataclasses.replace(CONFIG, member=1)
    distilled = dataclasses.replace(student_config, teacher=str(trained.out), distill_weight=1.0)
    runs = {
        name: training.train_text_expert(examples, tmp_path / name, config, log=lambda _: None).out
        for name, config in (("labels", student_config), ("teacher", distilled))
    }
    items = training.items_from_examples(examples, context=False)
    teacher = expert.TextExpert.load(trained.out).predict_items(items)

    def divergence(folder) -> float:
        student = expert.TextExpert.load(folder).predict_items(items)
        return float((teacher * (np.log(teacher) - np.log(student))).sum(1).mean())

    assert divergence(runs["teacher"]) < divergence(runs["labels"])
    assert json.loads((runs["teacher"] / CONFIG_FILE).read_text())["config"]["teacher"] == str(trained.out)
