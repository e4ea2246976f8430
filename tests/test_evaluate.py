"""`fusion evaluate`: a labelled set through the path users get; its figures are the hand count of its own rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusion.cli import main
from fusion.labels import EMOTIONS, ravdess_label


@pytest.fixture(scope="module")
def labelled(shared, tmp_path_factory):
    """A csv of 6 real RAVDESS clips (path, label, speaker) and a file that is not media, named as a clip."""
    folder = tmp_path_factory.mktemp("evaluate")
    clips = sorted((shared / "data/av-clips/ravdess").glob("*.mp4"))[:6]
    broken = folder / "01-01-03-01-01-01-07.mp4"
    broken.write_text("not a video\n")
    rows = [f"{clip},{ravdess_label(clip.name)},{clip.name[-6:-4]}" for clip in clips]
    rows.append(f"{broken},happiness,07")
    (folder / "set.csv").write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    return folder


def test_the_figures_are_the_hand_count_of_the_files_rows(labelled, capsys):
    out = labelled / "evaluation.json"
    code = main(["evaluate", str(labelled / "set.csv"), "--experts", "voice", "--format", "json", "-o", str(out)])
    assert code == 0
    (result,) = json.loads(out.read_text())
    rows = result["predictions"]
    assert result["files"] == len(rows) == 7 and result["experts"] == ["voice"]
    assert [r["predicted"] for r in rows][-1] == "none" and result["errors"][0][0].endswith("01-07.mp4")
    right = [r["label"] == r["predicted"] for r in rows]
    assert result["scores"]["wa"] == pytest.approx(np.mean(right))
    classes = sorted({r["label"] for r in rows})
    recall = {c: np.mean([r["predicted"] == c for r in rows if r["label"] == c]) for c in classes}
    assert result["scores"]["recall"] == pytest.approx(recall)
    assert result["scores"]["ua"] == pytest.approx(np.mean(list(recall.values())))
    confusion = np.array(result["scores"]["confusion"])
    assert confusion.sum() == 7 and np.trace(confusion) == sum(right)
    for r in rows[:-1]:
        assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-5) and r["predicted"] in EMOTIONS


def test_the_table_and_the_confusion_picture(labelled, capsys):
    picture = labelled / "confusion.png"
    assert main(["evaluate", str(labelled / "set.csv"), "--quiet", "--confusion", str(picture)]) == 0
    table = capsys.readouterr().out
    assert "UA" in table and "voice+text+face" in table and "error " in table
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subsets_in_one_run_are_what_a_predictor_with_only_those_experts_gives(labelled):
    from fusion.evaluation import evaluate
    from fusion.serving.predictor import Predictor

    data = [str(labelled / "set.csv")]
    both = evaluate(Predictor(experts=["voice", "text"]), data, subsets=[("voice",), ("voice", "text")])
    alone = evaluate(Predictor(experts=["voice"]), data)[0]
    assert [r["predicted"] for r in both[0].predictions] == [r["predicted"] for r in alone.predictions]
    for a, b in zip(both[0].predictions, alone.predictions):
        assert (a["probabilities"] is None and b["probabilities"] is None) or np.allclose(
            a["probabilities"], b["probabilities"], atol=1e-9
        )
    assert both[1].experts == ["voice", "text"] and len(both[1].predictions) == 7


def test_by_speaker_reads_each_speakers_recordings_together_and_a_bad_one_costs_nothing(labelled):
    """The voice normalises by speaker: with --by-speaker a speaker's clips share that speaker's statistics. A
    speaker with one clip gets what fusion.predict gives; the others get other voice outputs, whatever the order of
    their clips; the broken file, among actor 09's clips, is an error of its own."""
    from fusion.evaluation import evaluate
    from fusion.serving.predictor import Predictor

    predictor = Predictor(experts=["voice"])
    rows = (labelled / "set.csv").read_text().splitlines()
    rows[-1] = rows[-1].rsplit(",", 1)[0] + ",09"
    data = labelled / "by_speaker.csv"
    data.write_text("\n".join(rows) + "\n")
    (alone,) = evaluate(predictor, [str(data)])
    (together,) = evaluate(predictor, [str(data)], by_speaker=True)
    assert together.by_speaker and not alone.by_speaker
    assert [r["path"] for r in together.predictions] == [r["path"] for r in alone.predictions]
    assert [path for path, _ in together.errors] == [path for path, _ in alone.errors] == [rows[-1].split(",")[0]]
    speakers = [row.rsplit(",", 1)[1] for row in rows[1:]]
    single = [i for i, s in enumerate(speakers) if speakers.count(s) == 1 and i < len(speakers) - 1]
    shared = [i for i, s in enumerate(speakers) if s == "09" and i < len(speakers) - 1]
    assert single and len(shared) >= 2
    for i in single:
        assert together.predictions[i]["probabilities"] == pytest.approx(alone.predictions[i]["probabilities"])
    differs = [
        np.abs(np.subtract(together.predictions[i]["probabilities"], alone.predictions[i]["probabilities"])).max()
        for i in shared
    ]
    assert max(differs) > 1e-3
    paths = [together.predictions[i]["path"] for i in shared]
    backwards = predictor.predict_together(paths[::-1])[::-1]
    for i, prediction in zip(shared, backwards):
        probabilities = [prediction.summary.probabilities[e] for e in EMOTIONS]
        assert probabilities == pytest.approx(together.predictions[i]["probabilities"], abs=1e-5)
