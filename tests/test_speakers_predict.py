"""Speakers in fusion.predict and fusion score: the speaker column, the per-speaker summary, --speaker."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    assert set(result.summary.speakers) == {"S1", "S2"}
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
    for speaker, summary in result.summary.speakers.items():
        rows = result.timeline[result.timeline["speaker"] == speaker]
        probabilities = rows[list(result.labels)].to_numpy()
        kept = ~np.isnan(probabilities).any(1)
        weights = (rows["end"] - rows["start"]).to_numpy()[kept]
        expected = (probabilities[kept] * weights[:, None]).sum(0) / weights.sum()
        assert np.allclose([summary.probabilities[e] for e in result.labels], expected)
        assert summary.label == result.labels[int(np.argmax(expected))]
        assert summary.seconds == pytest.approx(weights.sum())
    only = result.for_speaker("S2")
    assert set(only.timeline["speaker"]) == {"S2"} and only.summary.speaker == "S2"
    assert result.to_dict()["segments"][0]["speaker"] in {"S1", "S2", None}


def test_one_clip_is_one_speaker_and_an_absent_speaker_is_a_clear_error(predictor, ravdess_clips, capsys):
    result = predictor.predict(ravdess_clips[0])
    assert set(result.summary.speakers) == {"S1"}
    with pytest.raises(NoSpeakerError, match="no speaker 'S3'"):
        result.for_speaker("S3")
    assert main(["predict", str(ravdess_clips[0]), "--speaker", "S3"]) == 1
    assert "no speaker 'S3' (found: S1)" in capsys.readouterr().err


def test_on_camera_of_an_audio_only_file_is_a_clear_error(predictor, interview, capsys, tmp_path):
    result = predictor.predict(interview[0])
    assert result.timeline["on_camera_speaking"].isna().all()  # no face: unknown everywhere
    assert all(theirs.on_camera is None for theirs in result.summary.speakers.values())
    assert main(["predict", str(interview[0]), "--speaker", "on-camera"]) == 1
    assert "no speaker is on camera: it has no video track" in capsys.readouterr().err
    out = tmp_path / "scores.csv"
    assert main(["score", str(interview[0]), "--out", str(out), "--speaker", "on-camera", "--quiet"]) == 1
    errors = pd.read_csv(tmp_path / "scores.errors.csv")
    assert errors["stage"].tolist() == ["speakers"] and "no video track" in errors["error"][0]


def test_score_tables_have_the_speaker_columns(interview, ravdess_clips, tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["score", str(interview[0]), str(ravdess_clips[0]), "--out", str(out), "--speakers", "--quiet"]) == 0
    segments = pd.read_csv(out)
    assert {"speaker", "on_camera_speaking"} <= set(segments.columns)
    files = pd.read_csv(tmp_path / "scores.files.csv").set_index("file")
    assert files.loc[str(ravdess_clips[0]), "speakers"].startswith("S1 ")
    assert files.loc[str(ravdess_clips[0]), "speakers"].endswith(" on camera")  # the clip's actor is shown speaking
    assert files.loc[str(interview[0]), "speakers"].count(";") == 1  # two speakers, neither on camera


def test_on_camera_of_a_video_where_no_one_speaks_says_so(predictor, no_audio_clip):
    result = predictor.predict(no_audio_clip)
    assert result.summary.speakers == {} and result.timeline["on_camera_speaking"].isna().all()
    with pytest.raises(NoSpeakerError, match="no speaker is on camera: no one speaks in it"):
        result.for_speaker("on-camera")
