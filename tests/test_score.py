"""Batch scoring (`fusion score`): bad files isolated, resumable after a kill, output schemas, Ray, bounded memory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.long_input import concatenate
from fusion.labels import EMOTIONS
from fusion.serving.batch import STAGE_COLUMNS, ScoreOptions, plot_name, score_files

SEGMENT_COLUMNS = ["file", "start", "end", "text", "face_present", *EMOTIONS, "label", "modalities", "summary_weight"]
SEGMENT_COLUMNS += ["attribution_audio", "attribution_text", "attribution_video"]
FILE_COLUMNS = [
    "file", "duration", "label", *EMOTIONS, "modalities", "segments", "damaged", *STAGE_COLUMNS, "checkpoint"
]  # fmt: skip
ERROR_COLUMNS = ["file", "stage", "error"]


def _fusion_score(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fusion.cli", "score", *args, "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    return pd.read_json(path, orient="records", lines=True)


def test_bad_files_go_to_the_errors_table_and_cost_no_good_file(ravdess_clips, no_audio_clip, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(ravdess_clips[0].read_bytes()[:150_000])
    out = tmp_path / "scores.parquet"
    inputs = [str(ravdess_clips[0].parent), str(empty), str(truncated), str(no_audio_clip)]
    run = _fusion_score(*inputs, "--out", str(out))
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr

    errors = pd.read_parquet(tmp_path / "scores.errors.parquet")
    assert list(errors.columns) == ERROR_COLUMNS
    assert sorted(errors.file) == sorted([str(empty), str(truncated)])
    assert set(errors.stage) == {"decode"}
    files = pd.read_parquet(tmp_path / "scores.files.parquet")
    good = [str(p) for p in ravdess_clips] + [str(no_audio_clip)]
    assert sorted(files.file) == sorted(good)
    assert files.set_index("file").loc[str(no_audio_clip), "modalities"] == "video"
    segments = pd.read_parquet(out)
    assert set(segments.file) == set(good)


def test_a_killed_run_resumes_and_every_file_appears_once(ravdess_clips, tmp_path):
    inputs = [str(p) for p in ravdess_clips[:5]]
    out = tmp_path / "scores.csv"
    parts = tmp_path / "scores.csv.parts"
    command = [sys.executable, "-m", "fusion.cli", "score", *inputs, "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and list(parts.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # part-way: at least one file written, the others not
    process.wait()
    done_before = len(list(parts.glob("*.json")))
    assert 1 <= done_before < len(inputs)
    assert not out.exists()

    rerun = _fusion_score(*inputs, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} already scored" in rerun.stdout
    files = _read(tmp_path / "scores.files.csv")
    assert sorted(files.file) == sorted(inputs)  # every file exactly once
    segments = _read(out)
    assert segments.groupby("file").size().to_dict() == files.set_index("file")["segments"].to_dict()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_output_schema(ravdess_clips, tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    report = score_files([str(p) for p in ravdess_clips[:2]], out, progress=False)
    assert report.ok and report.scored == 2
    segments = _read(out)
    assert list(segments.columns) == SEGMENT_COLUMNS
    np.testing.assert_allclose(segments[list(EMOTIONS)].sum(axis=1), 1.0, atol=1e-5)
    files = _read(tmp_path / f"scores.files{suffix}")
    assert list(files.columns) == FILE_COLUMNS
    assert (files["seconds_asr"] > 0).all() and (files["seconds_decode"] > 0).all()
    assert (files["seconds_total"] >= files["seconds_asr"]).all()
    errors = tmp_path / f"scores.errors{suffix}"
    if suffix == ".jsonl":
        assert errors.read_text() == ""  # no failures: no records
    else:
        assert list(_read(errors).columns) == ERROR_COLUMNS and _read(errors).empty


def test_ray_engine_gives_the_same_rows_as_local(ravdess_clips, tmp_path):
    ray = pytest.importorskip("ray")
    inputs = [str(p) for p in ravdess_clips[:3]]
    score_files(inputs, tmp_path / "local.parquet", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local Ray instance, started here
    try:
        report = score_files(inputs, tmp_path / "ray.parquet", engine="ray", progress=False)
    finally:
        ray.shutdown()
    assert report.ok and report.scored == 3
    local, remote = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("local", "ray"))
    pd.testing.assert_frame_equal(local, remote, atol=1e-5)


def test_plots_one_png_per_file(ravdess_clips, tmp_path):
    score_files([str(ravdess_clips[0])], tmp_path / "s.csv", options=ScoreOptions(plots=str(tmp_path / "plots")))
    png = tmp_path / "plots" / plot_name(str(ravdess_clips[0]))
    assert png.name.startswith(ravdess_clips[0].stem)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_three_minutes_in_bounded_memory(ravdess_clips, tmp_path):
    """The whole process tree of `fusion score` (the scoring process and its decoding process) stays bounded on a
    3-minute recording, and so does the decoding process on its own, sampled with psutil every 0.1 s."""
    import psutil

    long = tmp_path / "three-minutes.mp4"
    concatenate(ravdess_clips, long, seconds=180)
    out = tmp_path / "long.jsonl"
    run = subprocess.Popen(
        [sys.executable, "-m", "fusion.cli", "score", str(long), "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    root = psutil.Process(run.pid)
    peak_tree = peak_decoder = 0
    while run.poll() is None:
        try:
            family = [root, *root.children(recursive=True)]
            sizes = {p.pid: p.memory_info().rss for p in family}
            decoders = [p.pid for p in family if "fusion.media.decode_worker" in " ".join(p.cmdline())]
        except psutil.NoSuchProcess:  # a process ended between listing and reading it
            continue
        peak_tree = max(peak_tree, sum(sizes.values()))
        peak_decoder = max([peak_decoder] + [sizes[pid] for pid in decoders])
        time.sleep(0.1)
    assert run.returncode == 0, run.stderr.read()
    assert peak_decoder > 0, "the decoding process was never seen"
    # 900 sampled 1280x720 frames alone would take 2.5 GB if they were held; the models take about 1.5 GB.
    assert peak_tree < 3.0 * 1024**3, f"process tree peak RSS {peak_tree / 1024**3:.2f} GB"
    assert peak_decoder < 1.0 * 1024**3, f"decoding process peak RSS {peak_decoder / 1024**3:.2f} GB"
    segments = _read(out)
    assert segments.end.max() == pytest.approx(180.5, abs=1.0)
    json.loads(Path(out).read_text().splitlines()[0])  # one JSON object per line


def test_worker_processes_give_the_same_rows_as_one_process(ravdess_clips, tmp_path):
    inputs = [str(p) for p in ravdess_clips[3:5]]
    score_files(inputs, tmp_path / "one.parquet", progress=False)
    report = score_files(inputs, tmp_path / "two.parquet", workers=2, progress=False)
    assert report.ok and report.scored == 2
    one, two = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("one", "two"))
    pd.testing.assert_frame_equal(one, two, atol=1e-5)
