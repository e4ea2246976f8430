"""Learned cross-attention fusion over the experts' outputs against the bundle's late fusion, in one run.

    python -m benchmarks.attention_fusion --voice-oof ../cache/attn/voice_oof/probabilities \
        --seeds 0 1 2 --out benchmarks/results/attention_fusion

What each expert says about data it did not train on:
- face: the shipped face expert on its held-out share of FER2013 Training (fusion fit and validation pools, split
  80/20 by class) and on PublicTest (test);
- text: the shipped text ensemble on its dialogue-disjoint held-out share of MELD train (fit and validation pools,
  split 80/20 by dialogue) and on MELD dev (test);
- voice: out-of-fold outputs of voice experts trained with the shipped recipe (one member) on the other RAVDESS
  speakers plus nEMO, 3 folds of 6 actors: fold 0 for fitting, fold 1 for validation, fold 2 for testing. Made by

    python benchmarks/ravdess_folds.py --ravdess ../shared/data/ravdess-speech-16k --nemo ../shared/data/nemo-pl \
        --cache ../cache/speech --test-on ravdess --folds 3 --seeds 0 --parts both --train-on ravdess+nemo --bf16 \
        --no-baselines --save-probabilities --out ../cache/attn/voice_oof

  (16 min; its report is copied to benchmarks/results/attention_fusion/voice_oof.md).

fusion.training.attention.fit trains on label-matched pairs drawn from the fit pools with modality dropout, choosing
its epoch on 4,000 fixed pairs of the validation pools for every subset of modalities (each class drawn by the
prior late fusion assumes), and on each validation pool alone. Both fusions are scored on the
test pools: each corpus alone (its own modality: the late fusion of one modality is that expert, calibrated), and
4,000 fixed pairs for each subset of two or more modalities. UA = macro recall, WA = accuracy, weighted F1 for MELD;
mean ± std over the training seeds (late fusion has no seed). No test pool chooses anything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.child import describe_machine, write_results
from benchmarks.ravdess_folds import read_probabilities
from fusion.experts import attention
from fusion.experts import face as face_expert
from fusion.experts.bundle import ExpertBundle
from fusion.labels import EMOTIONS, MODALITIES, label_indices
from fusion.storage import CONFIG_FILE
from fusion.training import attention as attention_training
from fusion.training import face as face_training
from fusion.training import text as text_training
from fusion.training.datasets import image_folder, meld
from fusion.training.metrics import score

PAIRS = 4000  # paired examples per subset of modalities, validation and test
PAIR_SEED = {"validation": 1000, "test": 2000}  # the fixed pairs' draws, apart from every training seed
FIT_SHARE = 0.8  # of each expert's held-out pool, for fitting; the rest validates
SUBSETS = [s for r in range(1, 4) for s in itertools.combinations(MODALITIES, r)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="fusion/checkpoints/default", help="the bundle (late fusion, experts)")
    parser.add_argument("--voice-oof", required=True, help="folder of ravdess_folds.py --save-probabilities files")
    parser.add_argument("--fer-train", default="../shared/data/fer2013/train")
    parser.add_argument("--fer-test", default="../shared/data/fer2013/validation", help="FER2013 PublicTest")
    parser.add_argument("--meld-train", default="../shared/data/meld-text/train_sent_emo.csv")
    parser.add_argument("--meld-dev", default="../shared/data/meld-text/dev_sent_emo.csv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    bundle = ExpertBundle.load(args.checkpoint)
    pools = {"fit": {}, "validation": {}, "test": {}}
    for part, (probabilities, labels) in face_pools(bundle, args).items():
        pools[part]["video"] = (probabilities, labels)
    for part, (probabilities, labels) in text_pools(bundle, args).items():
        pools[part]["text"] = (probabilities, labels)
    for part, (probabilities, labels) in voice_pools(Path(args.voice_oof)).items():
        pools[part]["audio"] = (probabilities, labels)
    sizes = {part: {m: len(p[1]) for m, p in pool.items()} for part, pool in pools.items()}
    print("pools", sizes, flush=True)

    mix = bundle.late_fusion.pooled_prior(MODALITIES, len(EMOTIONS))  # the class mix of the pairs, as in training
    validation = _pairs(pools["validation"], "validation", mix)
    test = {subset: _subset_pairs(pools["test"], subset, PAIR_SEED["test"], mix) for subset in SUBSETS}
    late = {
        name: _scores(attention.late_fusion_proba(bundle.late_fusion, examples), labels)
        for name, (examples, labels) in _named(test)
    }
    runs = []
    for seed in args.seeds:
        config = attention_training.AttentionTrainConfig(seed=seed)
        result = attention_training.fit(bundle.late_fusion, pools["fit"], validation, config)
        scores = {
            name: _scores(attention.predict_proba(result.model, examples), labels)
            for name, (examples, labels) in _named(test)
        }
        runs.append(
            {
                "seed": seed,
                "epoch": result.epoch,
                "seconds": result.seconds,
                "history": result.history,
                "scores": scores,
            }
        )
        print(f"seed {seed}: epoch {result.epoch}, {result.seconds:.0f} s", flush=True)
    report = {
        "command": shlex.join(["python", "-m", "benchmarks.attention_fusion", *sys.argv[1:]]),
        "machine": describe_machine(),
        "pool_sizes": sizes,
        "late_fusion": late,
        "attention": runs,
        "wall_seconds": time.perf_counter() - started,
    }
    write_results(report, Path(args.out), markdown)


# ---------------------------------------------------------------------------------------------------------- pools


def face_pools(bundle: ExpertBundle, args) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The face expert's held-out share of FER2013 Training (split into fit / validation) and PublicTest."""
    train = image_folder(args.fer_train).examples
    training = json.loads((bundle.path / "face" / CONFIG_FILE).read_text())["training"]
    labels = [e.label for e in train]
    _, held = face_training.stratified_split(
        labels, fraction=training["validation_fraction"], seed=training["config"]["seed"]
    )
    held_labels = [labels[i] for i in held]
    fit_rows, val_rows = face_training.stratified_split(held_labels, fraction=1 - FIT_SHARE, seed=0)
    probabilities = bundle.face_probabilities(face_expert.read_faces([train[i].path for i in held]))
    y = label_indices(held_labels)
    test = image_folder(args.fer_test).examples
    test_p = bundle.face_probabilities(face_expert.read_faces([e.path for e in test]))
    return {
        "fit": (probabilities[fit_rows], y[fit_rows]),
        "validation": (probabilities[val_rows], y[val_rows]),
        "test": (test_p, label_indices([e.label for e in test])),
    }


def text_pools(bundle: ExpertBundle, args) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The text expert's dialogue-disjoint held-out share of MELD train (split into fit / validation by dialogue)
    and MELD dev."""
    train = meld(args.meld_train).examples
    config = (bundle.text.members[0] if hasattr(bundle.text, "members") else bundle.text).config
    items = text_training.items_from_examples(train, context=config.context)
    _, held = text_training.split_by_dialogue(items, config.validation_fraction, config.seed)
    held_items = [items[i] for i in held]
    fit_rows, val_rows = text_training.split_by_dialogue(held_items, 1 - FIT_SHARE, 0)
    probabilities = bundle.text.predict_items(held_items)
    y = label_indices([train[i].label for i in held])
    dev = meld(args.meld_dev).examples
    dev_p = bundle.text.predict_proba([e.text.strip() for e in dev])
    return {
        "fit": (probabilities[fit_rows], y[fit_rows]),
        "validation": (probabilities[val_rows], y[val_rows]),
        "test": (dev_p, label_indices([e.label for e in dev])),
    }


def voice_pools(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Out-of-fold voice outputs: fold 0 fits, fold 1 validates, fold 2 tests."""
    folds = read_probabilities(folder)
    return {part: folds[fold] for part, fold in (("fit", 0), ("validation", 1), ("test", 2))}


def _subset_pairs(pools, subset, seed, class_mix) -> tuple[list[dict], np.ndarray]:
    if len(subset) == 1:  # the corpus alone: every test example of its modality, as it is
        probabilities, labels = pools[subset[0]]
        return [{subset[0]: p[None]} for p in probabilities], labels
    return attention_training.paired_examples(
        pools, PAIRS, np.random.default_rng(seed), keep=subset, class_mix=class_mix
    )


def _pairs(pools, part, class_mix) -> tuple[list[dict], np.ndarray]:
    """PAIRS fixed examples of every subset of two or more modalities, and each modality's pool alone."""
    examples, labels = [], []
    for subset in SUBSETS:
        e, y = _subset_pairs(pools, subset, PAIR_SEED[part], class_mix)
        examples += e
        labels.append(y)
    return examples, np.concatenate(labels)


def _named(test):
    for subset, value in test.items():
        yield "+".join(subset), value


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    s = score([EMOTIONS[i] for i in labels], [EMOTIONS[i] for i in probabilities.argmax(1)], EMOTIONS)
    return {k: v for k, v in s.as_dict().items() if k in ("ua", "wa", "weighted_f1")}


# ------------------------------------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    seeds = [r["seed"] for r in report["attention"]]
    lines = [
        "# Learned cross-attention fusion against late fusion, on the experts' outputs",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Wall time: {report['wall_seconds'] / 60:.1f} min  ",
        f"Pools (examples per modality): {json.dumps(report['pool_sizes'])}",
        "",
        "Attention: fusion/experts/attention.py, trained on label-matched pairs with modality dropout, its epoch "
        f"chosen on validation pairs; seeds {seeds}, mean ± std. Late fusion: the bundle's "
        "(fusion/experts/late_fusion.py). "
        "A corpus alone is its own modality's test set (FER2013 PublicTest, MELD dev, RAVDESS fold-2 speakers); the "
        f"other rows are {PAIRS} label-matched pairs of those test sets, each class drawn by the prior that late "
        "fusion assumes for all three (as in training). In points.",
        "",
        "| test | metric | late fusion | attention | attention − late |",
        "|---|---|---|---|---|",
    ]
    names = {"audio": "RAVDESS (voice)", "text": "MELD dev (text)", "video": "FER2013 PublicTest (face)"}
    for name, late in report["late_fusion"].items():
        for metric in ("ua", "wa") + (("weighted_f1",) if name == "text" else ()):
            values = [100 * r["scores"][name][metric] for r in report["attention"]]
            mean = statistics.mean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(
                f"| {names.get(name, name + ' pairs')} | {metric.upper().replace('WEIGHTED_F1', 'weighted F1')} "
                f"| {100 * late[metric]:.1f} | {mean:.1f} ± {spread:.1f} | {mean - 100 * late[metric]:+.1f} |"
            )
    lines += [
        "",
        "Epoch chosen per seed (0 = the untrained model, i.e. late fusion): "
        + ", ".join(f"seed {r['seed']}: {r['epoch']}" for r in report["attention"])
        + f"; training {statistics.mean(r['seconds'] for r in report['attention']):.0f} s per seed.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
