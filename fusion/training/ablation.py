"""Modality ablations: what each modality adds, measured by retraining without it and by dropping it at inference.

For every non-empty subset of the modalities the data has (audio alone is the baseline):

- retrain: a model is trained from the cached features seeing only that subset;
- drop: the model trained on all of the data's modalities is evaluated with the others removed
  (:func:`fusion.training.train.keep_modalities`: exactly the outputs of feeding the examples without them).

Every subset uses the same speaker-independent folds and the same training seeds, so runs are paired: the same
test examples, the same validation speakers, the same initialisation seed. Per subset and mode, :func:`summarize`
gives UA (macro recall), WA (accuracy), macro-F1 and weighted F1 as mean ± standard deviation over seeds and
folds; per-class recall; and the paired difference to audio alone with a percentile bootstrap confidence interval
over test examples (:mod:`fusion.training.statistics`). The same seeds give the same numbers on the same machine
and thread count. :func:`ablate` writes the record of a run with :mod:`fusion.training.ablation_report`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from statistics import mean, stdev

import numpy as np
import torch

from encoders.loading import EncoderSources
from encoders.runtime import pick_device
from fusion.labels import EMOTIONS, MODALITIES
from fusion.media.features import RecordingFeatures
from fusion.media.orphans import exit_with_parent
from fusion.model import FusionConfig
from fusion.training.ablation_report import write
from fusion.training.cache import FeatureCache
from fusion.training.datasets import Example, from_specs, speaker_folds, speaker_split
from fusion.training.metrics import METRICS, score
from fusion.training.statistics import bootstrap
from fusion.training.train import TrainConfig, fit, predict_proba

MODES = ("retrain", "drop", "experts")  # experts: fusion.training.expert_ablation
BASELINE = ("audio",)


@dataclass
class AblationConfig:
    modalities: tuple[str, ...] | None = None  # which of the data's modalities to ablate; None: all it has
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds; each also picks that run's validation speakers
    folds: int = 3  # speaker-independent folds; the number of speakers gives leave-one-speaker-out
    fold_seed: int = 0  # shuffles speakers into folds; the same folds for every seed and subset
    validation_fraction: float = 0.15  # of the training speakers, for early stopping; 0: none, keep the last epoch
    metric: str = "ua"  # the metric of the differences and the figure (weighted_f1 for MELD-style data)
    bootstrap: int = 2000  # resamples of the test examples
    confidence: float = 0.95
    bootstrap_seed: int = 0
    workers: int = 1  # trainings run in parallel processes, each with one torch thread, when above 1
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class Job:
    """One training: a subset of modalities, a seed and a fold, and the subsets its model is evaluated with."""

    subset: tuple[str, ...]
    seed: int
    fold: int
    train_rows: tuple[int, ...]
    test_rows: tuple[int, ...]
    evaluate: tuple[tuple[str, ...], ...]


@dataclass
class JobResult:
    job: Job
    best_epoch: int
    seconds: float  # wall time of the training and its predictions
    cpu_seconds: float  # CPU time of the process meanwhile: below `seconds` x threads when others share the CPU
    predicted: dict[tuple[str, ...], np.ndarray]  # evaluated subset -> (n_test,) predicted label indices


@dataclass
class Ablation:
    """Out-of-fold predictions of every subset, mode and seed: each example is tested once per seed."""

    labels: tuple[str, ...]
    modalities: tuple[str, ...]  # the ablated modalities, in MODALITIES order
    subsets: list[tuple[str, ...]]
    true: np.ndarray  # (N,) label indices
    folds: list[list[int]]  # test rows of each fold
    seeds: tuple[int, ...]
    predicted: dict[tuple[str, tuple[str, ...]], np.ndarray]  # (mode, subset) -> (n_seeds, N) label indices
    runs: list[dict]  # one per (mode, subset, seed, fold): scores on that fold's test examples
    seconds: float


def subsets_of(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, smallest first, each in MODALITIES order: (audio,), (text,), (audio, text), ..."""
    ordered = [m for m in MODALITIES if m in modalities]
    return [subset for size in range(1, len(ordered) + 1) for subset in combinations(ordered, size)]


def subset_name(subset: Sequence[str]) -> str:
    """("audio", "text") -> "audio+text"."""
    return "+".join(subset)


def data_modalities(features: Sequence[RecordingFeatures]) -> tuple[str, ...]:
    """The modalities that at least one example really has, in MODALITIES order."""
    present = {m for f in features for m in f.modalities}
    return tuple(m for m in MODALITIES if m in present)


def run_ablation(
    examples: Sequence[Example],
    features: Sequence[RecordingFeatures],
    *,
    config: AblationConfig,
    device: str | torch.device | None = None,
) -> Ablation:
    """Train and evaluate every subset on every fold and seed. examples[i] (with its label) has features[i]."""
    if config.metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {config.metric!r}")
    has = data_modalities(features)
    requested = has if config.modalities is None else tuple(config.modalities)
    missing = sorted(set(requested) - set(has))
    if missing or not requested:
        raise ValueError(f"cannot ablate modalities {missing or '(none)'}: the data has {list(has)}")
    modalities = tuple(m for m in MODALITIES if m in requested)
    labels = tuple(e for e in EMOTIONS if e in {x.label for x in examples})
    subsets = subsets_of(modalities)
    folds = speaker_folds(examples, config.folds, seed=config.fold_seed)
    jobs = [
        # The model that sees every ablated modality is also the one evaluated with the others dropped.
        Job(subset, seed, k, tuple(train), tuple(test), tuple(subsets) if subset == modalities else (subset,))
        for subset in reversed(subsets)  # largest first: the slowest trainings start early
        for seed in config.seeds
        for k, (train, test) in enumerate(folds)
    ]
    started = time.perf_counter()
    results = _run_jobs(jobs, examples, features, labels=labels, config=config, device=device)
    seconds = time.perf_counter() - started

    true = np.array([labels.index(e.label) for e in examples])
    predicted: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
    runs = []
    for result in results:
        job = result.job
        for subset, predictions in result.predicted.items():
            mode = "retrain" if subset == job.subset else "drop"
            rows = predicted.setdefault((mode, subset), np.full((len(config.seeds), len(examples)), -1))
            rows[config.seeds.index(job.seed), list(job.test_rows)] = predictions
            scores = score([labels[i] for i in true[list(job.test_rows)]], [labels[i] for i in predictions], labels)
            runs.append(
                {
                    "mode": mode,
                    "subset": subset_name(subset),
                    "seed": job.seed,
                    "fold": job.fold,
                    "trained_on": subset_name(job.subset),
                    "best_epoch": result.best_epoch,
                    "train_seconds": result.seconds,
                    "train_cpu_seconds": result.cpu_seconds,
                    "scores": scores.as_dict(),
                }
            )
    order = [(mode, subset_name(subset)) for mode in MODES for subset in subsets]
    runs.sort(key=lambda run: (order.index((run["mode"], run["subset"])), run["seed"], run["fold"]))
    test_rows = [test for _, test in folds]
    return Ablation(labels, modalities, subsets, true, test_rows, config.seeds, predicted, runs, seconds)


def _run_jobs(
    jobs: list[Job],
    examples: Sequence[Example],
    features: Sequence[RecordingFeatures],
    *,
    labels: tuple[str, ...],
    config: AblationConfig,
    device: str | torch.device | None,
) -> list[JobResult]:
    """Run the trainings here, or in config.workers processes (spawned, so no torch state is forked)."""
    data = (examples, features, labels, config, device)
    if config.workers <= 1:
        return _collect((_run_job(job, *data) for job in jobs), total=len(jobs))
    # The pool's exit terminates the workers, also when an error or Ctrl-C ends the run early.
    with multiprocessing.get_context("spawn").Pool(config.workers, initializer=_init_worker, initargs=data) as pool:
        return _collect(pool.imap_unordered(_run_job_in_worker, jobs), total=len(jobs))


def _collect(outcomes: Iterable[JobResult], *, total: int) -> list[JobResult]:
    """The results as they come, each reported on stderr with the time so far."""
    started = time.perf_counter()
    results = []
    for result in outcomes:
        results.append(result)
        job = result.job
        print(
            f"[{len(results)}/{total}, {time.perf_counter() - started:.0f} s] trained on"
            f" {subset_name(job.subset)}, seed {job.seed}, fold {job.fold}: best epoch {result.best_epoch},"
            f" {result.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return results


_worker_data: tuple | None = None  # (examples, features, labels, config, device) in a worker process


def _init_worker(*data) -> None:
    global _worker_data
    exit_with_parent()
    torch.set_num_threads(1)  # one thread per process: small models gain more from processes than threads
    _worker_data = data


def _run_job_in_worker(job: Job) -> JobResult:
    return _run_job(job, *_worker_data)


def _run_job(
    job: Job,
    examples: Sequence[Example],
    features: Sequence[RecordingFeatures],
    labels: tuple[str, ...],
    config: AblationConfig,
    device: str | torch.device | None,
) -> JobResult:
    """Train on the job's training rows seeing only its subset; predict its test rows with each evaluated subset."""
    started, started_cpu = time.perf_counter(), time.process_time()
    fit_rows, check_rows = list(job.train_rows), []
    if config.validation_fraction > 0:  # split before filtering, so every subset validates on the same speakers
        fit_part, check_part = speaker_split(
            [examples[i] for i in fit_rows], validation_fraction=config.validation_fraction, seed=job.seed
        )
        fit_rows, check_rows = [fit_rows[j] for j in fit_part], [fit_rows[j] for j in check_part]
    # Examples with none of the subset's modalities carry no signal for it; they still count as test examples.
    fit_rows = [i for i in fit_rows if set(features[i].modalities) & set(job.subset)]
    validation = ([features[i] for i in check_rows], [examples[i].label for i in check_rows]) if check_rows else None
    result = fit(
        [features[i] for i in fit_rows],
        [examples[i].label for i in fit_rows],
        validation=validation,
        groups=[examples[i].dataset for i in fit_rows],
        model_config=FusionConfig(labels=labels),
        train_config=dataclasses.replace(config.train, seed=job.seed),
        device=device,
        modalities=job.subset,
    )
    test = [features[i] for i in job.test_rows]
    predicted = {
        subset: predict_proba(result.model, test, device=device, modalities=subset).argmax(1) for subset in job.evaluate
    }
    return JobResult(
        job, result.best_epoch, time.perf_counter() - started, time.process_time() - started_cpu, predicted
    )


def summarize(ablation: Ablation, config: AblationConfig) -> list[dict]:
    """One row per mode and subset: metrics over runs, pooled metrics and the difference to the baseline, with CIs.

    mean / std: over the (seed, fold) runs, each scored on its fold's test examples. pooled: each seed's
    out-of-fold predictions scored over all examples, averaged over seeds, with a bootstrap interval; difference:
    pooled metric minus the baseline's (audio alone, same mode), with the paired bootstrap interval.
    """
    n_labels = len(ablation.labels)
    rows = []
    for mode in MODES:
        baseline = ablation.predicted.get((mode, BASELINE))
        for subset in ablation.subsets:
            if (mode, subset) not in ablation.predicted:
                continue
            predicted = ablation.predicted[mode, subset]
            runs = [r["scores"] for r in ablation.runs if r["mode"] == mode and r["subset"] == subset_name(subset)]
            settings = {"resamples": config.bootstrap, "confidence": config.confidence, "seed": config.bootstrap_seed}
            pooled = bootstrap(ablation.true, predicted, n_labels=n_labels, **settings)
            difference = None
            if baseline is not None and subset != BASELINE:
                difference = bootstrap(ablation.true, predicted, baseline, n_labels=n_labels, **settings)
            rows.append(
                {
                    "mode": mode,
                    "subset": subset_name(subset),
                    "mean": {m: mean(s[m] for s in runs) for m in METRICS},
                    "std": {m: _std([s[m] for s in runs]) for m in METRICS},
                    "pooled": pooled,
                    "difference_to_audio": difference,
                    "recall": {
                        label: mean(s["recall"][label] for s in runs if label in s["recall"])
                        for label in ablation.labels
                        if any(label in s["recall"] for s in runs)
                    },
                    "runs": len(runs),
                }
            )
    return rows


def _std(values: list[float]) -> float:
    return stdev(values) if len(values) > 1 else 0.0


def ablate(
    data: Sequence[str],
    *,
    cache_dir: str | os.PathLike,
    out: str | os.PathLike,
    config: AblationConfig,
    device: str | torch.device | None = None,
    command: str | None = None,
    sources: EncoderSources | None = None,
) -> list[dict]:
    """Run the ablation on corpora given as KIND=PATH specs and write ablation.md, .json and .png to `out`.

    Features come from (and go to) the cache, extracted with sources (see :class:`FeatureCache`); examples whose
    features cannot be computed are reported and left out. Returns the summary rows (see :func:`summarize`).
    """
    started = time.perf_counter()
    manifest = from_specs(data)  # the adapters warn about every file they skip
    features, report = FeatureCache(cache_dir, sources=sources).build(manifest.examples)
    print(report, file=sys.stderr)
    usable = [i for i, f in enumerate(features) if f is not None]
    examples = [manifest.examples[i] for i in usable]
    ablation = run_ablation(examples, [features[i] for i in usable], config=config, device=device)
    rows = summarize(ablation, config)
    record = {
        "command": command or command_line(),
        "machine": machine(config, device),
        "wall_seconds": time.perf_counter() - started,
        "data": {
            "specs": list(data),
            "examples": len(examples),
            "skipped": [list(s) for s in manifest.skipped] + [list(s) for s in report.skipped],
            "speakers": len({e.speaker for e in examples}),
            "labels": list(ablation.labels),
            "class_counts": dict(Counter(e.label for e in examples)),
            "modalities": list(ablation.modalities),
            "folds": folds_record(ablation, examples),
        },
        "config": dataclasses.asdict(config),
        "baseline": subset_name(BASELINE),
        "metric": config.metric,
        "training_seconds": ablation.seconds,
        "rows": rows,
        "runs": ablation.runs,
        "predictions": predictions_record(ablation, examples),
    }
    write(record, out)
    return rows


def folds_record(ablation: Ablation, examples: Sequence[Example]) -> list[dict]:
    """Each fold's test speakers and number of examples, for the record of a run."""
    return [
        {"fold": k, "test_speakers": sorted({examples[i].speaker for i in test}), "examples": len(test)}
        for k, test in enumerate(ablation.folds)
    ]


def predictions_record(ablation: Ablation, examples: Sequence[Example]) -> dict:
    """Every example's path and label, and its predicted label per mode, subset and seed, for the record."""
    return {
        "paths": [e.path for e in examples],
        "true": [ablation.labels[i] for i in ablation.true],
        **{
            f"{mode}:{subset_name(subset)}": [[ablation.labels[i] for i in seed_row] for seed_row in predicted]
            for (mode, subset), predicted in ablation.predicted.items()
        },
    }


def command_line() -> str:
    """The command that started this process, as a user would type it from the current folder."""
    if sys.orig_argv[1:2] == ["-m"]:  # python -m fusion.cli ablate ...
        return shlex.join(["python", *sys.orig_argv[1:]])
    program = Path(sys.argv[0])
    if program.suffix != ".py":  # the installed `fusion` command
        return shlex.join([program.name, *sys.argv[1:]])
    if program.resolve().is_relative_to(Path.cwd()):
        program = program.resolve().relative_to(Path.cwd())
    return shlex.join(["python", str(program), *sys.argv[1:]])


def machine(config: AblationConfig, device: str | torch.device | None) -> str:
    """The hardware and threads a run used, in words."""
    resolved = pick_device(device)
    where = f"GPU {torch.cuda.get_device_name(resolved)}" if resolved.type == "cuda" else "CPU"
    threads = "1 torch thread each" if config.workers > 1 else f"{torch.get_num_threads()} torch threads"
    return (
        f"{platform.machine()} {where}, {os.cpu_count()} cores, {config.workers} training process(es) with"
        f" {threads}, torch {torch.__version__}"
    )
