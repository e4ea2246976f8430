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
