"""Modality ablation of an experts bundle (the shipped default model): every subset of its experts, pooled late.

The bundle's experts were each trained on their own corpus, apart from one another, and its late fusion has no
weights fitted across modalities (fusion.experts.late_fusion). So the model trained without a modality is the same
experts less that one: retraining without it and dropping it at inference are one experiment, the mode "experts".

Per recording, each expert scores each output segment from what the segment holds of its modality, exactly as
fusion.predict does (fusion.experts.bundle.ExpertBundle.segment_probabilities); a subset's segments are pooled by
the bundle's late fusion and averaged over the recording as fusion.predict's summary weighs them (seconds times
ExpertBundle.summary_weights).
A recording with none of a subset's modalities gets the pooled prior's most likely class (the model's guess
without evidence). The experts' outputs are cached per recording, keyed by its bytes and the bundle's id.

Honest numbers need experts that never heard the test speakers. A bundle's expert trained on the data being ablated
(the shipped voice expert heard every RAVDESS speaker) is replaced by out-of-fold outputs of its recipe: files of
`{...}seed{S}-fold{K}.npz` holding `paths` (N,) and `probabilities` (N, len(EMOTIONS)), as
benchmarks/ravdess_folds.py --save-probabilities writes them. They are matched to recordings by
:func:`fusion.training.out_of_fold.recording_key` (a RAVDESS audio-visual clip takes the output for its audio-only
twin, the same performance) and replace the expert's output in every segment where the bundle's expert is present.
Each seed of the out-of-fold outputs is one run of the ablation; without them, the shipped experts are one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from statistics import mean, stdev

import numpy as np
import torch
from tqdm import tqdm

from alignment import make_segments
from encoders.loading import EncoderSources
from fusion.errors import FileError
from fusion.experts.bundle import ExpertBundle
from fusion.labels import MODALITIES
from fusion.media.features import FeatureExtractor
from fusion.storage import save_npz
from fusion.training.ablation_report import write
from fusion.training.cache import CacheReport, example_features, is_transcript_only, read_entry
from fusion.training.datasets import Example, from_specs
from fusion.training.metrics import METRICS, score
from fusion.training.out_of_fold import read_specs, recording_key
from fusion.training.splits import speaker_folds
from fusion.training.statistics import bootstrap

BASELINE = ("audio",)  # the subset every other is compared with
MODE = "experts"  # the record's name for this kind of ablation (earlier records also hold "retrain" and "drop")
OUTPUTS_VERSION = 1  # bump when the code computes different expert outputs from the same bundle and file


@dataclass
class AblationConfig:
    modalities: tuple[str, ...] | None = None  # which of the data's modalities to ablate; None: all it has
    folds: int = 3  # speaker-independent folds; the number of speakers gives leave-one-speaker-out
    fold_seed: int = 0  # shuffles speakers into folds; the same folds for every seed and subset
    metric: str = "ua"  # the metric of the differences and the figure (weighted_f1 for MELD-style data)
    bootstrap: int = 2000  # resamples of the test examples
    confidence: float = 0.95
    bootstrap_seed: int = 0


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


@dataclass(frozen=True)
class RecordingOutputs:
    """What a bundle's experts say about one recording: per output segment, each expert's probabilities."""

    durations: np.ndarray  # (S,) seconds of each segment
    probabilities: dict[str, np.ndarray]  # modality -> (S, len(EMOTIONS)), NaN rows where the segment lacks it


class ExpertOutputs:
    """Every recording's expert outputs (RecordingOutputs), computed on first use and read from `directory` after."""

    def __init__(
        self,
        bundle: ExpertBundle,
        directory: str | os.PathLike,
        *,
        sources: EncoderSources | None = None,
        device: str | torch.device | None = None,
    ):
        self.bundle = bundle
        self.sources = (sources or EncoderSources()).resolve()
        self.device = device
        self.directory = Path(directory) / f"experts-{bundle.id}"
        self._extractor: FeatureExtractor | None = None

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:  # the bundle's text expert reads the words itself
            self._extractor = FeatureExtractor(
                sources=self.sources, device=self.device, whisper_blocks=self.bundle.whisper_block
            )
        return self._extractor

    def build(
        self, examples: Sequence[Example], *, progress: bool = True
    ) -> tuple[list[RecordingOutputs | None], CacheReport]:
        """The outputs of every example (None where it was skipped, with the reason in the report)."""
        report = CacheReport()
        outputs: list[RecordingOutputs | None] = []
        for example in tqdm(examples, desc="experts", unit="file", disable=not progress):
            try:
                entry = self._entry(example)
                cached = read_entry(entry, _read, report)  # a damaged entry is removed and computed again
                if cached is not None:
                    outputs.append(cached)
                    report.loaded += 1
                    continue
                features = example_features(self.extractor, example)
            except (FileError, OSError) as error:  # this file's; a model that cannot load stops the run
                report.skipped.append((example.path, str(error)))
                outputs.append(None)
                continue
            segments = make_segments(features.utterances, features.duration)
            computed = RecordingOutputs(
                np.array([s.end - s.start for s in segments], np.float64),
                self.bundle.segment_probabilities(features, segments),
            )
            save_npz(entry, {"durations": computed.durations, **computed.probabilities})
            outputs.append(computed)
            report.computed += 1
        return outputs, report

    def _entry(self, example: Example) -> Path:
        content = example.text.encode() if is_transcript_only(example) else Path(example.path).read_bytes()
        digest = hashlib.sha256(content)
        settings = {"version": OUTPUTS_VERSION, "whisper": self.sources.whisper, "face": self.sources.face}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        key = digest.hexdigest()
        return self.directory / key[:2] / f"{key}.npz"


def _read(entry: Path) -> RecordingOutputs:
    with np.load(entry, allow_pickle=False) as data:
        return RecordingOutputs(data["durations"], {m: data[m] for m in MODALITIES})


def recording_probabilities(
    outputs: RecordingOutputs, bundle: ExpertBundle, subset: Sequence[str], replaced: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    """(len(EMOTIONS),) the subset's experts pooled per segment and averaged over the recording as fusion.predict's
    summary does (weighted by seconds times ExpertBundle.summary_weights); None where no segment has any of the
    subset's modalities. replaced: {modality: (C,)
    probabilities} used instead of that expert's output in every segment where it is present."""
    experts = {}
    for modality in subset:
        p = outputs.probabilities[modality]
        if modality in replaced:
            present = ~np.isnan(p).any(1)
            p = np.where(present[:, None], replaced[modality][None, :], np.nan)
        experts[modality] = p
    pooled = bundle.fuse(experts)
    keep = ~np.isnan(pooled).any(1)
    if not keep.any():
        return None
    weights = (outputs.durations * bundle.summary_weights(experts))[keep]
    return (pooled[keep] * weights[:, None]).sum(0) / max(weights.sum(), 1e-9)


def run_expert_ablation(
    examples: Sequence[Example],
    outputs: Sequence[RecordingOutputs],
    bundle: ExpertBundle,
    *,
    config: AblationConfig,
    out_of_fold: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]] | None = None,
) -> Ablation:
    """Every subset of the ablated modalities on every example, once per seed of the out-of-fold outputs.

    out_of_fold: {modality: {seed: {recording key: (C,) probabilities}}}; every modality given must have the same
    seeds. A recording without an out-of-fold output keeps the bundle's expert output for that modality.
    """
    out_of_fold = dict(out_of_fold or {})
    seed_sets = {m: tuple(sorted(seeds)) for m, seeds in out_of_fold.items()}
    if len(set(seed_sets.values())) > 1:
        raise ValueError(f"the out-of-fold outputs have different seeds per modality: {seed_sets}")
    seeds = next(iter(seed_sets.values()), (0,))
    has = tuple(
        m for m in MODALITIES if any(not np.isnan(o.probabilities[m]).all() for o in outputs) and m in bundle.modalities
    )
    requested = has if config.modalities is None else tuple(config.modalities)
    missing = sorted(set(requested) - set(has))
    if missing or not requested:
        raise ValueError(f"cannot ablate modalities {missing or '(none)'}: the bundle's experts find {list(has)}")
    modalities = tuple(m for m in MODALITIES if m in requested)
    subsets = subsets_of(modalities)
    labels = bundle.labels
    true = np.array([labels.index(e.label) for e in examples])
    folds = [test for _, test in speaker_folds(examples, config.folds, seed=config.fold_seed)]
    started = time.perf_counter()
    predicted, runs = {}, []
    keys = [recording_key(e.path) for e in examples]
    for subset in subsets:
        rows = np.empty((len(seeds), len(examples)), np.int64)
        guess = int(np.argmax(bundle.late_fusion.pooled_prior(subset, len(labels))))
        for s, seed in enumerate(seeds):
            for i, (example_outputs, key) in enumerate(zip(outputs, keys)):
                replaced = {
                    m: out_of_fold[m][seed][key] for m in subset if m in out_of_fold and key in out_of_fold[m][seed]
                }
                p = recording_probabilities(example_outputs, bundle, subset, replaced)
                rows[s, i] = guess if p is None else int(np.argmax(p))
            for k, test in enumerate(folds):
                scores = score([labels[i] for i in true[test]], [labels[i] for i in rows[s, test]], labels)
                runs.append(
                    {"mode": MODE, "subset": subset_name(subset), "seed": seed, "fold": k, "scores": scores.as_dict()}
                )
        predicted[MODE, subset] = rows
    return Ablation(labels, modalities, subsets, true, folds, seeds, predicted, runs, time.perf_counter() - started)


def ablate_experts(
    data: Sequence[str],
    *,
    bundle_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    out: str | os.PathLike,
    config: AblationConfig,
    out_of_fold: Sequence[str] = (),
    device: str | torch.device | None = None,
    command: str | None = None,
    sources: EncoderSources | None = None,
) -> list[dict]:
    """Ablate a bundle's experts on corpora given as KIND=PATH specs; write ablation.md, .json and .png to `out`.

    out_of_fold: "MODALITY=FOLDER" specs of out-of-fold outputs (read_out_of_fold); several folders of one
    modality add their seeds. Returns the summary rows (fusion.training.ablation_report.summarize).
    """
    started = time.perf_counter()
    replacements = read_specs(out_of_fold)
    chosen = sources or EncoderSources()
    bundle = ExpertBundle.load(bundle_path, text_model=chosen.text, device=device)
    manifest = from_specs(data)
    outputs, report = ExpertOutputs(bundle, cache_dir, sources=chosen, device=device).build(manifest.examples)
    print(report, file=sys.stderr)
    usable = [i for i, o in enumerate(outputs) if o is not None]
    examples = [manifest.examples[i] for i in usable]
    ablation = run_expert_ablation(
        examples, [outputs[i] for i in usable], bundle, config=config, out_of_fold=replacements
    )
    keys = [recording_key(e.path) for e in examples]
    record = {
        "kind": MODE,
        "command": command or command_line(),
        "machine": _machine(),
        "wall_seconds": time.perf_counter() - started,
        "bundle": {"path": _shown(bundle_path), "id": bundle.id, "late_fusion": bundle.late_fusion.to_dict()},
        "out_of_fold": {
            m: {
                "folders": [s.partition("=")[2] for s in out_of_fold if s.partition("=")[0] == m],
                "seeds": sorted(seeds),
                "recordings": sum(k in next(iter(seeds.values())) for k in keys),
            }
            for m, seeds in replacements.items()
        },
        "data": {
            "specs": list(data),
            "examples": len(examples),
            "skipped": [list(s) for s in manifest.skipped] + [list(s) for s in report.skipped],
            "speakers": len({e.speaker for e in examples}),
            "labels": [label for label in ablation.labels if label in {e.label for e in examples}],
            "class_counts": dict(Counter(e.label for e in examples)),
            "modalities": list(ablation.modalities),
            "with_modality": {
                m: sum(not np.isnan(outputs[i].probabilities[m]).all() for i in usable) for m in ablation.modalities
            },
            "folds": folds_record(ablation, examples),
        },
        "config": {**_asdict(config), "seeds": list(ablation.seeds)},
        "baseline": "audio",
        "metric": config.metric,
        "training_seconds": 0.0,
        "rows": summarize(ablation, config),
        "runs": ablation.runs,
        "predictions": predictions_record(ablation, examples),
    }
    write(record, out)
    return record["rows"]


def summarize(ablation: Ablation, config: AblationConfig) -> list[dict]:
    """One row per mode and subset: metrics over runs, pooled metrics and the difference to the baseline, with CIs.

    mean / std: over the (seed, fold) runs, each scored on its fold's test examples. pooled: each seed's
    out-of-fold predictions scored over all examples, averaged over seeds, with a bootstrap interval; difference:
    pooled metric minus the baseline's (audio alone, same mode), with the paired bootstrap interval.
    """
    n_labels = len(ablation.labels)
    rows = []
    for mode in sorted({mode for mode, _ in ablation.predicted}):
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


def _shown(path: str | os.PathLike) -> str:
    """A path as the user would type it: relative to the current folder when it lies inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(path)


def _asdict(config: AblationConfig) -> dict:
    keep = ("modalities", "folds", "fold_seed", "metric", "bootstrap", "confidence", "bootstrap_seed")
    return {name: getattr(config, name) for name in keep}


def _machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
