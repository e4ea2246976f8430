"""Batch scoring: many recordings in, one table of segments out; resumable, and one bad file never costs the others.

    fusion score interviews/ --out scores.parquet --workers 2 --plots plots/

Each file's result is written as soon as it is scored, atomically, to a JSON file in ``scores.parquet.parts/``,
keyed by the file's path, size and modification time and the checkpoint's id; re-running the same command skips
what is already there, so a crash or a kill loses at most the files in flight. When every file has been tried, the
parts are gathered into three tables written beside each other (each atomically):

- ``scores.parquet``: one row per segment: file, start, end, text, face_present, one probability per emotion,
  label, modalities; with ``--speakers`` also speaker and on_camera_speaking (see fusion.serving.prediction);
- ``scores.files.parquet``: one row per scored file: duration, clip-level probabilities and label, modalities,
  the spans that failed to decode (``damaged``, empty for an intact file),
  number of segments, and seconds per stage; with ``--speakers`` also each speaker's label, seconds and whether
  they are on camera (``speakers``, see :func:`speakers_cell`);
- ``scores.errors.parquet``: one row per file that could not be scored: file, stage, error.

One run at a time writes to an output: a run holds a lock on ``scores.parquet.lock``, and a second run on the same
``--out`` is refused at once (OutputError) rather than scoring the same files again.

The same per-file function, :func:`score_file`, runs in this process, in worker processes (``workers > 1``), or as
Ray tasks (``engine="ray"``); every process loads each model once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from alignment import DEFAULT_WINDOW_S
from encoders.loading import EncoderSources
from fusion.arguments import ENGINES
from fusion.errors import MediaError, NoModalityError, NoSpeakerError, OutputError, check_writable
from fusion.media.orphans import exit_with_parent
from fusion.serving.prediction import Summary
from fusion.serving.predictor import Predictor, model_id, resolve_checkpoint
from fusion.storage import atomic_path

MEDIA_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .mpg .mpeg .wmv .ts .wav .flac .mp3 .m4a .aac .ogg .opus".split()
)
MANIFEST_SUFFIXES = (".csv", ".txt")  # a csv with a "path" column (as fusion's manifests have), or one path a line
OUTPUT_SUFFIXES = (".parquet", ".csv", ".jsonl")
# The per-file summary's seconds per stage, from the predictor's timings. Decoding and face detection run in the
# decoding process, so they overlap the other stages; "total" is the file's wall-clock time.
STAGE_COLUMNS = {
    "seconds_decode": ("decode",),
    "seconds_asr": ("whisper",),
    "seconds_face": ("face_detection",),
    "seconds_audio": ("log_mel", "whisper_states"),
    "seconds_experts": ("experts",),  # the voice, text and face experts and their fusion
    "seconds_speakers": ("voice_prints", "diarization"),  # who speaks when, with --speakers
    "seconds_total": ("total",),
}
# Environment variables a Ray worker needs to find the same models as this process.
FORWARDED_ENV = (
    "FUSION_WHISPER_MODEL",
    "FUSION_TEXT_MODEL",
    "FUSION_FACE_MODEL",
    "FUSION_CHECKPOINT",
    "HF_HUB_OFFLINE",
)


@dataclass(frozen=True)
class ScoreOptions:
    """Everything a worker needs to build its predictor and score a file (plain values, so it pickles)."""

    checkpoint: str | None = None
    sources: EncoderSources = EncoderSources()  # as chosen; each worker's predictor resolves it with the checkpoint
    device: str | None = None
    segments: str = "utterance"
    window_s: float = DEFAULT_WINDOW_S
    plots: str | None = None  # folder for one PNG per file
    speakers: bool = False  # who speaks when: a speaker column in the segments table
    n_speakers: int | None = None  # how many people speak, when known; else estimated
    speaker: str | None = None  # keep only this speaker's segments and summary ("S1", ...)


@dataclass(frozen=True)
class ScoreReport:
    files: int  # inputs found
    scored: int  # scored in this run
    resumed: int  # already scored by an earlier run with the same checkpoint
    failed: int  # in the errors table
    outputs: tuple[Path, Path, Path]  # segments, per-file summary, errors

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def __str__(self) -> str:
        return (
            f"{self.files} files: {self.scored} scored, {self.resumed} already scored, {self.failed} failed; "
            f"wrote {', '.join(str(p) for p in self.outputs)}"
        )


def find_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files to score from files, folders (searched recursively for MEDIA_SUFFIXES) and manifests, in order, once
    each. A path that does not exist is kept, so that it gets its row in the errors table."""
    found: list[str] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(str(p) for p in item.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())
        elif item.suffix.lower() in MANIFEST_SUFFIXES and item.is_file():
            found += _read_manifest(item)
        else:
            found.append(str(item))
    return list(dict.fromkeys(found))


def _read_manifest(path: Path) -> list[str]:
    """Paths listed in a manifest; relative ones are relative to the manifest's folder."""
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "path" not in table.columns:
            raise ValueError(f"{path}: a manifest csv needs a 'path' column, found {list(table.columns)}")
        listed = [p for p in table["path"] if p]
    else:
        listed = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [str(path.parent / p) if not os.path.isabs(p) else p for p in listed]


def file_key(path: str, checkpoint_id: str) -> str:
    """What makes a result reusable: the file's absolute path, size and modification time, and the checkpoint."""
    try:
        stat = os.stat(path)
        identity = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{checkpoint_id}"
    except OSError:  # a missing file: it will fail, and is retried on every run
        identity = f"{os.path.abspath(path)}|missing|{checkpoint_id}"
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def plot_name(path: str) -> str:
    """The PNG of a file: its name, and a hash of its absolute path, so same-named files in two folders differ."""
    return f"{Path(path).stem}-{hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:8]}.png"


_LOADED: dict[ScoreOptions, Predictor] = {}  # this process's predictor, by the options it was loaded with


def _predictor(options: ScoreOptions, *, first: str | None = None) -> Predictor:
    """This process's predictor: loaded on its first file (first: that file, decoded while the models load), reused
    for every later one; it decodes in the decoding process, a chunk ahead of the models, whatever the files'
    lengths (a batch pays its start-up once)."""
    if options not in _LOADED:
        _LOADED.clear()
        _LOADED[options] = Predictor(
            options.checkpoint,
            sources=options.sources,
            device=options.device,
            speakers=options.speakers,
            background=True,
            prefetch=first,
        )
    return _LOADED[options]


def score_file(path: str, options: ScoreOptions) -> dict:
    """Score one file with this process's predictor.

    Returns {"file", "status": "ok", "summary": {...}, "segments": [...]} or {"file", "status": "error", "stage",
    "error"}: a file that fails is reported, never raised, so that it cannot stop the batch. The stage is "decode"
    (unreadable, truncated), "features" (no audio and no face), "plot" or "predict" (anything else, with its
    traceback).
    """
    predictor = _predictor(options)
    try:
        prediction = predictor.predict(
            path, segments=options.segments, window_s=options.window_s, n_speakers=options.n_speakers
        )
        if options.speaker is not None:
            prediction = prediction.for_speaker(options.speaker)
    except NoSpeakerError as error:
        return _error(path, "speakers", str(error))
    except MediaError as error:
        return _error(path, "decode", str(error))
    except NoModalityError as error:
        return _error(path, "features", str(error))
    except Exception:  # an unexpected failure of one file: reported with its traceback in the errors table
        return _error(path, "predict", traceback.format_exc())
    if options.plots:
        try:
            Path(options.plots).mkdir(parents=True, exist_ok=True)
            prediction.plot(path=Path(options.plots) / plot_name(path))
        except Exception:  # a plot that fails does not lose the scores, but the file is reported
            return _error(path, "plot", traceback.format_exc())
    segments = prediction.segment_rows()
    summary = {
        "duration": prediction.duration,
        "label": prediction.summary.label,
        **prediction.summary.probabilities,
        "modalities": ",".join(prediction.summary.modalities),
        "segments": len(segments),
        # seconds that failed to decode, as "1.47-1.58 1.64-1.77" (see Prediction.damaged); empty when intact
        "damaged": " ".join(f"{start:.2f}-{end:.2f}" for start, end in prediction.damaged),
        **{c: sum(prediction.timings.get(s, 0.0) for s in stages) for c, stages in STAGE_COLUMNS.items()},
        "checkpoint": predictor.model_id,
    }
    if options.speakers:
        summary["speakers"] = speakers_cell(prediction.summary)
    return {
        "file": path,
        "status": "ok",
        "summary": summary,
        "segments": segments,
    }


def speakers_cell(summary: Summary) -> str:
    """A prediction's speakers in one cell of the summary table: "S1 neutral 12.3 s on camera; S2 sadness 8.0 s"
    (the one reported with --speaker: just that speaker)."""
    if summary.speaker is not None:  # already one speaker's summary (Prediction.for_speaker)
        speakers = {summary.speaker: summary}
    else:
        speakers = summary.speakers or {}
    return "; ".join(
        f"{name} {theirs.label or '-'} {theirs.seconds:.1f} s{' on camera' if theirs.on_camera else ''}"
        for name, theirs in speakers.items()
    )


def _error(path: str, stage: str, message: str) -> dict:
    return {"file": path, "status": "error", "stage": stage, "error": message.strip()}


def score_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    options: ScoreOptions | None = None,
    workers: int = 1,
    engine: str = "local",
    progress: bool = True,
) -> ScoreReport:
    """Score every input file into the tables beside out (see the module's docstring); resumes an earlier run."""
    options = options or ScoreOptions()
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out must end in one of {', '.join(OUTPUT_SUFFIXES)}, got {out.name}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    check_writable(out)
    with output_lock(out):
        return _score(inputs, out, options, workers, engine, progress)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on out's lock file (``out.lock``) while a run writes out's parts and tables; a second
    run on the same out is refused with OutputError. The operating system drops the lock when the process ends,
    however it ends, so a killed run never leaves a stale lock."""
    lock_path = out.with_name(out.name + ".lock")
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                out, f"another fusion score is writing to it (it holds {lock_path}); wait for it, or use another --out"
            ) from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # still held: a run that opens it now waits for nothing of ours


def _score(inputs, out: Path, options: ScoreOptions, workers: int, engine: str, progress: bool) -> ScoreReport:
    # The checkpoint is checked first (a folder that is no bundle stops the run before any work), then in this
    # process the models load before any file is scored (a missing model stops the run with its own error), while
    # the decoding process starts on the first file.
    checkpoint_id = model_id(resolve_checkpoint(options.checkpoint))
    if options.speakers:  # other rows than a run without speakers: not resumed from one
        checkpoint_id += f"|speakers={options.n_speakers}|{options.speaker}"
    files = find_inputs(inputs)
    keys = {path: file_key(path, checkpoint_id) for path in files}
    parts = out.with_name(out.name + ".parts")
    todo = [path for path in files if not (parts / f"{keys[path]}.json").is_file()]
    if engine == "local" and workers == 1:
        _predictor(options, first=todo[0] if todo else None)
    parts.mkdir(parents=True, exist_ok=True)

    errors = []
    run = {"local": _run_local, "ray": _run_ray}[engine]
    bar = tqdm(total=len(todo), unit="file", desc="scoring", disable=not progress)
    try:
        for record in run(todo, options, workers):
            if record["status"] == "ok":
                with atomic_path(parts / f"{keys[record['file']]}.json") as temporary:
                    temporary.write_text(json.dumps(record))
            else:
                errors.append({k: record[k] for k in ("file", "stage", "error")})
            bar.update()
        bar.close()
        records = [json.loads(p.read_text()) for path in files if (p := parts / f"{keys[path]}.json").is_file()]
        outputs = _write_tables(out, records, errors)
    except OSError as error:  # a full disk, a folder gone: what was written stays, a rerun resumes from it
        if not any(parts.iterdir()):
            parts.rmdir()
        raise OutputError(out, f"cannot write: {error.strerror or error}") from error
    scored = len(todo) - len(errors)
    return ScoreReport(len(files), scored, len(records) - scored, len(errors), outputs)


def _run_local(files: list[str], options: ScoreOptions, workers: int) -> Iterator[dict]:
    if workers == 1:
        for i, path in enumerate(files):
            if i + 1 < len(files):  # decoded while this one's last chunk is scored
                _predictor(options).prefetch(files[i + 1])
            yield score_file(path, options)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)  # cores shared out, so workers do not oversubscribe them
    context = multiprocessing.get_context("spawn")  # fork would copy this process's torch threads and locks
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(score_file, path, options): path for path in files}
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool as error:  # a worker was killed (e.g. out of memory): every file in flight
                yield _error(futures[future], "predict", f"worker process died ({error}); run again to retry")


def _init_worker(threads: int) -> None:
    """A pool worker: its share of the cores, and an exit when the scoring process dies (fusion.media.orphans)."""
    exit_with_parent()
    torch.set_num_threads(threads)


def _run_ray(files: list[str], options: ScoreOptions, workers: int) -> Iterator[dict]:
    """Ray tasks, one per file, on the cluster at $RAY_ADDRESS (or a local one started here); each Ray worker
    process keeps its predictor between tasks. workers: CPUs asked for per task are this machine's / workers."""
    import ray  # optional: only this engine needs it

    if not ray.is_initialized():
        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": env}, log_to_driver=False)
    on_gpu = (options.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    task: Callable = ray.remote(score_file).options(
        num_cpus=max(1, (os.cpu_count() or 1) // workers), num_gpus=1 if on_gpu else 0
    )
    pending = {task.remote(path, options): path for path in files}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        path = pending.pop(done[0])
        try:
            yield ray.get(done[0])
        except ray.exceptions.RayError as error:  # the task's worker or node died; score_file reports the rest
            yield _error(path, "predict", f"Ray task failed ({error}); run again to retry")


def _write_tables(out: Path, records: list[dict], errors: list[dict]) -> tuple[Path, Path, Path]:
    segments = pd.DataFrame([{"file": r["file"], **row} for r in records for row in r["segments"]])
    files = pd.DataFrame([{"file": r["file"], **r["summary"]} for r in records])
    failures = pd.DataFrame(errors, columns=["file", "stage", "error"])
    base = out.name[: -len(out.suffix)]
    paths = (out, out.with_name(f"{base}.files{out.suffix}"), out.with_name(f"{base}.errors{out.suffix}"))
    for table, path in zip((segments, files, failures), paths):
        _write_table(table, path)
    return paths


def _write_table(table: pd.DataFrame, path: Path) -> None:
    """The table at path, atomically (fusion.storage.atomic_path), in the format its suffix names."""
    suffix = path.suffix.lower()
    with atomic_path(path) as temporary:
        if suffix == ".parquet":
            table.to_parquet(temporary, index=False)
        elif suffix == ".csv":
            table.to_csv(temporary, index=False)
        elif len(table):
            table.to_json(temporary, orient="records", lines=True)
        else:  # pandas would write one blank line, which is not a JSON record
            temporary.write_text("")


__all__ = ["ScoreOptions", "ScoreReport", "file_key", "find_inputs", "score_file", "score_files"]
