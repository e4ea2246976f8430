"""The speech corpora of the cross-corpus benchmark: their adapters on the real files, and the leave-one-corpus-out
split (benchmarks/cross_corpus.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.cross_corpus import CORPORA, corpus_classes, leave_one_out, load_corpora
from fusion.experts.voice import voice_label
from fusion.labels import EMOTIONS
from fusion.media.decoding import decode
from fusion.training.datasets import emospeech_in, emovo, from_spec, labels_tsv


def test_emovo_reads_six_actors_fourteen_sentences_seven_states(shared):
    examples = emovo(shared / "data/emovo-it").examples
    assert len(examples) == 588
    assert Counter(e.speaker for e in examples) == {f"emovo:{s}": 98 for s in ("f1", "f2", "f3", "m1", "m2", "m3")}
    assert Counter(e.label for e in examples) == {emotion: 84 for emotion in EMOTIONS}
    assert all(e.dataset == "emovo" and e.modalities == ("audio", "text") and e.text for e in examples)
    first = next(e for e in examples if e.path.endswith("dis-f1-b1.opus"))
    assert (first.label, first.speaker, first.text) == ("disgust", "emovo:f1", "b1")
    audio = decode(first.path).audio  # a real utterance of a few seconds at 16 kHz
    assert audio is not None and 1.0 < len(audio) / 16_000 < 10.0


def test_emospeech_in_reads_four_classes_from_many_phone_users(shared):
    examples = emospeech_in(shared / "data/emospeech-in").examples
    assert len(examples) == 400
    assert Counter(e.label for e in examples) == {"neutral": 100, "anger": 100, "fear": 100, "happiness": 100}
    assert Counter(e.native_label for e in examples)["calm"] == 100
    assert len({e.speaker for e in examples}) == 105
    # the corpus's calm is the voice expert's calm (as RAVDESS's), neutral in the canonical view
    assert {voice_label(e.dataset, e.label, e.native_label) for e in examples} == {"calm", "anger", "fear", "happiness"}
    durations = [len(decode(e.path).audio) / 16_000 for e in examples[:5]]
    assert all(0.3 < d < 10.0 for d in durations)


def test_corpus_folders_are_named_on_the_command_line(shared):
    assert len(from_spec(f"emovo={shared / 'data/emovo-it'}").examples) == 588
    assert len(from_spec(f"emospeech-in={shared / 'data/emospeech-in'}").examples) == 400


def test_a_folder_without_labels_fails_clearly(tmp_path):
    (tmp_path / "a.opus").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="emovo labels not found: .*labels.tsv"):
        labels_tsv(tmp_path, "emovo")


def test_a_listed_file_that_is_missing_or_unknown_is_skipped_with_its_reason(tmp_path):
    (tmp_path / "a.opus").write_bytes(b"x")
    (tmp_path / "b.opus").write_bytes(b"x")
    (tmp_path / "labels.tsv").write_text(
        "file\temotion\tspeaker\ttext\na.opus\tcalm\tu1\tgo\nb.opus\tbored\tu1\tgo\nc.opus\tfear\tu2\tgo\n"
    )
    with pytest.warns(UserWarning, match="skipped 2"):
        manifest = labels_tsv(tmp_path, "emospeech-in")
    assert [e.label for e in manifest.examples] == ["neutral"]
    reasons = dict(manifest.skipped)
    assert "bored" in reasons[str(tmp_path / "b.opus")] and "not found" in reasons[str(tmp_path / "c.opus")]


def test_leave_one_corpus_out_never_trains_on_the_held_out_corpus(shared):
    corpora = load_corpora(shared, list(CORPORA))
    sizes = {name: len(examples) for name, examples in corpora.items()}
    assert sizes == {"ravdess": 1080, "nemo": 4481, "emovo": 588, "emospeech-in": 400}
    for held_out in CORPORA:
        train, test = leave_one_out(corpora, held_out)
        train_paths = {corpora[c][i].path for c, i in train}
        test_paths = {corpora[c][i].path for c, i in test}
        assert not train_paths & test_paths and len(test_paths) == sizes[held_out]
        assert {c for c, _ in train} == set(CORPORA) - {held_out} and {c for c, _ in test} == {held_out}
        assert len(train) == sum(sizes.values()) - sizes[held_out]
    assert corpus_classes(corpora["nemo"]) == tuple(e for e in EMOTIONS if e != "disgust")
    assert corpus_classes(corpora["emospeech-in"]) == ("anger", "fear", "happiness", "neutral")
