"""Awkward use of the command line: unwritable outputs fail before any work, bad numbers are refused by the parser,
tables get the usual file permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from fusion.cli import main
from fusion.errors import CheckpointError, OutputError, check_writable
from fusion.serving.batch import ScoreOptions, output_lock, score_files

UNWRITABLE = "/sys/fusion-test.csv"  # sysfs: no file can be created there, not even by root


def _fusion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusion.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("target", ["missing-folder/x.csv", UNWRITABLE])
def test_predict_to_an_unwritable_place_fails_at_once_without_a_traceback(ravdess_clips, tmp_path, target):
    output = target if target.startswith("/") else str(tmp_path / target)
    started = time.perf_counter()
    run = _fusion("predict", str(ravdess_clips[0]), "--format", "csv", "-o", output)
    assert run.returncode == 1
    assert run.stderr.startswith("fusion: error:") and "cannot write here" in run.stderr
    assert "Traceback" not in run.stderr
    assert time.perf_counter() - started < 15  # no model was loaded, nothing was predicted


@pytest.mark.parametrize("target", ["missing-folder/scores.csv", UNWRITABLE])
def test_score_to_an_unwritable_place_fails_before_any_model_loads(ravdess_clips, tmp_path, target):
    output = target if target.startswith("/") else str(tmp_path / target)
    with pytest.raises(OutputError, match="cannot write here"):
        # a checkpoint that does not exist: had the output not been checked first, its error would come instead
        score_files([str(ravdess_clips[0])], output, options=ScoreOptions(checkpoint=str(tmp_path / "no-checkpoint")))
    run = _fusion("score", str(ravdess_clips[0]), "--out", output, "--quiet")
    assert run.returncode == 1 and "cannot write here" in run.stderr and "Traceback" not in run.stderr


def test_check_writable_names_what_is_wrong(tmp_path):
    check_writable(tmp_path / "new.csv")  # a new file in a writable folder
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        check_writable(tmp_path / "a" / "b.csv")


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "x.mp4", "--window", "0"],
        ["predict", "x.mp4", "--window", "-1"],
        ["predict", "x.mp4", "--window", "nan"],
        ["score", "x.mp4", "--out", "s.csv", "--workers", "0"],
        ["train-expert", "voice", "--data", "ravdess=x", "--cache", "c", "--out", "o", "--epochs", "0"],
        ["train-expert", "text", "--data", "meld=x", "--out", "o", "--epochs", "zero"],
        ["evaluate", "ravdess=x", "--experts", "voice,mouth"],
    ],
)
def test_bad_numbers_are_refused_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "must be" in error or "not an integer" in error or "expected distinct names" in error


def test_tables_get_the_usual_permissions(ravdess_clips, tmp_path):
    mask = os.umask(0o022)
    try:
        report = score_files([str(ravdess_clips[0])], tmp_path / "scores.csv", progress=False)
    finally:
        os.umask(mask)
    assert report.ok
    for table in report.outputs:
        assert stat.S_IMODE(os.stat(table).st_mode) == 0o644, table


def test_a_second_writer_on_the_same_out_is_refused(ravdess_clips, tmp_path):
    """A run holds out's lock (here this test); another run on that out stops at once with a clear message, before
    any model loads, and a run after the lock is released goes ahead."""
    out = tmp_path / "scores.csv"
    missing = ScoreOptions(checkpoint=str(tmp_path / "no-checkpoint"))  # reached only once the lock is taken
    with output_lock(out):
        with pytest.raises(OutputError, match="another fusion score is writing to it"):
            score_files([str(ravdess_clips[0])], out, options=missing)
        run = _fusion("score", str(ravdess_clips[0]), "--out", str(out), "--quiet")
        assert run.returncode == 1 and "another fusion score" in run.stderr and "Traceback" not in run.stderr
    with pytest.raises(CheckpointError):  # the lock is free again: the run gets as far as loading its checkpoint
        score_files([str(ravdess_clips[0])], out, options=missing)


def test_a_killed_score_leaves_no_worker_behind(ravdess_clips, tmp_path):
    """kill -9 of `fusion score --workers 2` while its pool workers and their decoding processes run: every one of
    them exits within a few seconds (fusion.media.orphans), instead of finishing its file alone."""
    import psutil

    parent = subprocess.Popen(
        [sys.executable, "-m", "fusion.cli", "score", *map(str, ravdess_clips), "--out", str(tmp_path / "s.csv"),
         "--workers", "2", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            family = psutil.Process(parent.pid).children(recursive=True)
            decoders = [p for p in family if "fusion.media.decode_worker" in " ".join(p.cmdline())]
            if len(decoders) >= 2:
                break
            assert parent.poll() is None, "the run ended before its workers were seen"
            time.sleep(0.2)
        else:
            pytest.fail("no two decoding processes appeared within 120 s")
        parent.kill()
        parent.wait()
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"still running after their parent was killed: {[p.cmdline()[:3] for p in alive]}"
    finally:
        parent.kill()


def test_a_recording_with_damaged_packets_is_predicted_with_the_damage_reported(ravdess_clips, tmp_path):
    import fusion

    data = bytearray(ravdess_clips[0].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 10_000] = np.random.default_rng(0).bytes(10_000)  # 10 KB overwritten mid-file
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    prediction = fusion.predict(damaged)
    assert prediction.damaged and all(0 < start < end < prediction.duration for start, end in prediction.damaged)
    assert prediction.duration > 3.2 and len(prediction.timeline) >= 1
    assert prediction.to_dict()["damaged"] == [list(span) for span in prediction.damaged]
    assert fusion.predict(ravdess_clips[0]).damaged == []


@pytest.mark.parametrize("kind", ["dithered silence", "white noise"])
def test_silence_and_noise_give_no_emotion_from_the_voice(tmp_path, kind):
    """30 s without speech: voice activity detection leaves the voice no tokens, so with no words and no face every
    segment is flagged (NaN probabilities, no modality) instead of carrying a confident emotion."""
    import soundfile

    import fusion

    scale = {"dithered silence": 1e-4, "white noise": 0.1}[kind]
    path = tmp_path / "no-speech.wav"
    soundfile.write(path, (np.random.default_rng(0).standard_normal(30 * 16_000) * scale).astype(np.float32), 16_000)
    prediction = fusion.predict(path)
    timeline = prediction.timeline
    assert len(timeline) >= 10
    assert timeline["label"].eq("").all() and timeline["modalities"].fillna("").eq("").all()
    assert timeline[list(fusion.EMOTIONS)].isna().all().all()
    # nothing is known of the whole recording either: nulls, not "0% of every emotion", and no modality claimed
    summary = prediction.to_dict()["summary"]
    assert summary["label"] is None and set(summary["probabilities"].values()) == {None}
    assert summary["modalities"] == []


def test_a_truncated_weights_file_is_a_checkpoint_error_naming_it(ravdess_clips, tmp_path, capsys):
    import shutil

    import fusion
    from fusion.serving.predictor import DEFAULT_CHECKPOINT

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_CHECKPOINT, bundle)
    weights = bundle / "face" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(fusion.CheckpointError, match="face/model.safetensors"):
        fusion.load(bundle)
    assert main(["predict", str(ravdess_clips[0]), "--checkpoint", str(bundle)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "model.safetensors" in error and "Traceback" not in error


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_predict_to_a_full_disk_is_an_output_error_and_leaves_no_file(ravdess_clips, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.csv"
    monkeypatch.setattr("pathlib.Path.write_bytes", _disk_full)
    assert main(["predict", str(ravdess_clips[0]), "--format", "csv", "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "No space left" in error and "x.csv" in error
    assert not out.exists() and not list(tmp_path.iterdir())


def test_score_to_a_full_disk_is_an_output_error_and_leaves_no_lock(ravdess_clips, tmp_path, monkeypatch, capsys):
    import pandas as pd

    out = tmp_path / "s.csv"
    monkeypatch.setattr(pd.DataFrame, "to_csv", _disk_full)
    assert main(["score", str(ravdess_clips[0]), "--out", str(out), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "No space left" in error
    assert not out.exists() and not (tmp_path / "s.csv.lock").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv.parts"]  # what was scored stays, to resume from


@pytest.mark.parametrize("damage", ["no face folder", "unknown setting", "labels reversed"])
def test_a_bundle_that_is_not_what_it_says_is_a_checkpoint_error(tmp_path, damage):
    import json
    import shutil

    import fusion
    from fusion.experts.bundle import read_bundle_config
    from fusion.serving.predictor import DEFAULT_CHECKPOINT

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_CHECKPOINT, bundle)
    config = json.loads((bundle / "experts.json").read_text())
    if damage == "no face folder":
        shutil.rmtree(bundle / "face")
        match = "names the face expert"
    elif damage == "unknown setting":
        config["temperature_schedule"] = "cosine"
        match = "does not know"
    else:
        config["labels"] = config["labels"][::-1]
        match = "labels"
    (bundle / "experts.json").write_text(json.dumps(config))
    with pytest.raises(fusion.CheckpointError, match=match):
        read_bundle_config(bundle)
