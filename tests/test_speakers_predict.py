"""Speakers in fusion.predict and fusion score: the speaker column, the per-speaker summary, --speaker."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from fusion.cli import main
from fusion.errors import NoSpeakerError
from fusion.serving.predictor import Predictor
from tests.test_diarization import recording, take


@pytest.fixture(scope="module")
def predictor(shared) -> Predictor:
    return Predictor(speakers=True)


@pytest.fixture(scope="module")
def interview(shared, tmp_path_factory):
    """Actor 02 (female) and actor 13 (male) in turns of two takes, written as a 16 kHz wav; the take spans."""
    order = [(2, 1, 1), (2, 2, 2), (13, 1, 1), (13, 2, 2), (2, 3, 1), (2, 1, 2), (13, 3, 1), (13, 1, 2)]
    audio, spans, who = recording([(f"A{a}", take(shared, a, e, s)) for a, e, s in order])
    path = tmp_path_factory.mktemp("interview") / "two.wav"
    soundfile.write(path, audio, 16_000)
    return path, spans, who


def test_each_take_is_said_by_its_speaker(predictor, interview):
    path, spans, who = interview
    result = predictor.predict(path)
    assert set(result.summary["speakers"]) == {"S1", "S2"}
    timeline = result.timeline
    said = timeline[timeline["text"].str.strip() != ""]
    # the speaker of every segment with words is the actor whose take holds the segment's middle
    actor_of = {}
    for row in said.itertuples():
        middle = (row.start + row.end) / 2
        actor = next(w for (a, b), w in zip(spans, who) if a - 0.3 <= middle <= b + 0.3)
        actor_of.setdefault(actor, set()).add(row.speaker)
    assert actor_of["A2"] == {"S1"} and actor_of["A13"] == {"S2"}  # S1 speaks first


def test_the_summary_of_a_speaker_is_the_weighted_mean_of_their_segments(predictor, interview):
    result = predictor.predict(interview[0])
    for speaker, summary in result.summary["speakers"].items():
        rows = result.timeline[result.timeline["speaker"] == speaker]
        probabilities = rows[list(result.labels)].to_numpy()
        kept = ~np.isnan(probabilities).any(1)
        weights = (rows["end"] - rows["start"]).to_numpy()[kept]
        expected = (probabilities[kept] * weights[:, None]).sum(0) / weights.sum()
        assert np.allclose([summary["probabilities"][e] for e in result.labels], expected)
        assert summary["label"] == result.labels[int(np.argmax(expected))]
        assert summary["seconds"] == pytest.approx(weights.sum())
    only = result.for_speaker("S2")
    assert set(only.timeline["speaker"]) == {"S2"} and only.summary["speaker"] == "S2"
    assert result.to_dict()["segments"][0]["speaker"] in {"S1", "S2", None}


def test_one_clip_is_one_speaker_and_an_absent_speaker_is_a_clear_error(predictor, ravdess_clips, capsys):
    result = predictor.predict(ravdess_clips[0])
    assert set(result.summary["speakers"]) == {"S1"}
    with pytest.raises(NoSpeakerError, match="no speaker 'S3'"):
        result.for_speaker("S3")
    assert main(["predict", str(ravdess_clips[0]), "--speaker", "S3"]) == 1
    assert "no speaker 'S3' (found: S1)" in capsys.readouterr().err
