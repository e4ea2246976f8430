"""Awkward use of the command line: unwritable outputs fail before any work, bad numbers are refused by the parser,
tables get the usual file permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from fusion.cli import main
from fusion.errors import OutputError, check_writable
from fusion.score import ScoreOptions, score

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
        score([str(ravdess_clips[0])], output, options=ScoreOptions(checkpoint=str(tmp_path / "no-checkpoint")))
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
        ["train", "--data", "ravdess=x", "--cache", "c", "--out", "o", "--epochs", "0"],
        ["ablate", "ravdess=x", "--cache", "c", "--out", "o", "--seeds", "zero"],
    ],
)
def test_bad_numbers_are_refused_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "must be" in error or "not an integer" in error


def test_tables_get_the_usual_permissions(ravdess_clips, tmp_path):
    mask = os.umask(0o022)
    try:
        report = score([str(ravdess_clips[0])], tmp_path / "scores.csv", progress=False)
    finally:
        os.umask(mask)
    assert report.ok
    for table in report.outputs:
        assert stat.S_IMODE(os.stat(table).st_mode) == 0o644, table
