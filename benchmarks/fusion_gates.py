"""Fusions compared on what the experts said through the product path, out of fold: does a modality add or subtract?

    python -m benchmarks.fusion_gates --work ../cache/product --out benchmarks/results/fusion_gates

Reads the experts' outputs per segment that benchmarks/product_path.py saved for each fold (RAVDESS speech of actors
its voice expert never heard, through Predictor.predict; the 11 audio-visual clips likewise) and fuses them again
as each candidate fusion would, scoring each file by its summary (the mean over its segments weighted by seconds
times the fusion's summary weights), as
`fusion evaluate` does:

- RAVDESS speech, 7 classes (calm counted as neutral): voice alone, and voice + the words Whisper heard. The words
  are two fixed, neutral sentences: they carry no emotion, so a fusion that lets them argue subtracts.
- Label-matched pairs: a MELD utterance with a voice of the same label from the same fold (RAVDESS actors the voice
  expert never heard): here the words do carry emotion, so a fusion that ignores them loses.
- The 11 clips: voice, voice + words, voice + words + face.

Candidates: the shipped late fusion (product rule over calibrated evidence); a per-expert weight on the words and the
face (w); a gate on the words and the face by their own evidence of emotion, weight (1 - q(neutral))^gamma
(fusion.experts.late_fusion); the same gate with bland words and faces (q(neutral) at least their prior's) no evidence
at all (neutral_as_absence); that rule with a stricter boundary (words count only where q(neutral) is under rho times
their prior's, absence_ratio) and a weight w; that rule with each gated expert weighted by its certainty which emotion
it sees (certainty, kappa 1: no setting to choose). Each candidate's setting is chosen per test fold on the other folds
(RAVDESS and the pairs built from MELD train's validation share), as the issue asks (`preference`): of the settings
that do not subtract from the voice on RAVDESS, the best on the pairs; the test fold then scores it, so every figure
here is out of fold. The shipped setting is the one chosen so on all folds (with MELD dev's pairs).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.child import describe_machine, write_results
from fusion.experts.bundle import ExpertBundle
from fusion.experts.late_fusion import LateFusion
from fusion.labels import EMOTIONS
from fusion.serving.predictor import DEFAULT_CHECKPOINT
from fusion.training.datasets import meld
from fusion.training.metrics import score
from fusion.training.text import items_from_examples, split_by_dialogue

NONE = "none"
SUBSETS = {"voice": ("audio",), "voice+words": ("audio", "text"), "voice+words+face": ("audio", "text", "video")}
GAMMAS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
RATIOS = (1.0, 0.75, 0.5, 0.25)  # absence_ratio: words count where q(neutral) < ratio x their prior's
PAIRS_PER_UTTERANCE = 1


def candidates(late: LateFusion) -> dict[str, list[tuple[str, LateFusion]]]:
    """{family: [(setting, fusion), ...]}: each family's settings to choose among, all on the shipped bundle's
    temperatures and priors; the shipped fusion itself (its gates as they are) is the last row."""
    plain = dataclasses.replace(late, gates={}, neutral_as_absence=False, absence_ratio=1.0, certainty=0.0)
    absent = dataclasses.replace(plain, gates={"text": 0.0, "video": 0.0}, neutral_as_absence=True)
    return {
        "late fusion, no gate": [("-", plain)],
        "weight on words and face": [
            (f"w={w}", dataclasses.replace(plain, weights=plain.weights | {"text": w, "video": w})) for w in WEIGHTS
        ],
        "gate on words and face": [
            (f"gamma={g}", dataclasses.replace(plain, gates={"text": g, "video": g})) for g in GAMMAS
        ],
        "gate, bland words and faces no evidence at all": [
            (f"gamma={g}", dataclasses.replace(plain, gates={"text": g, "video": g}, neutral_as_absence=True))
            for g in (0.0, *GAMMAS)
        ],
        "bland no evidence, a stricter boundary and a weight": [
            (
                f"rho={rho}, w={w}",
                dataclasses.replace(absent, absence_ratio=rho, weights=plain.weights | {"text": w, "video": w}),
            )
            for rho in RATIOS
            for w in WEIGHTS[1:]
        ],
        # no setting to choose: the weight is the words' (the face's) own certainty which emotion (kappa 1)
        "bland no evidence, weighted by certainty": [("kappa=1", dataclasses.replace(absent, certainty=1.0))],
        "the shipped fusion": [("-", late)],
    }


def learned(late: LateFusion, speech: list[dict], validation_pairs: list, chosen: list[int], seed: int):
    """The cross-attention fusion trained (fusion.training.attention.fit, modality dropout) on pairs drawn from
    the chosen folds: voices by label, and as words both MELD train's validation utterances (words that carry
    emotion) and the words Whisper heard in RAVDESS (that carry none, under every label)."""
    from fusion.training.attention import AttentionTrainConfig, fit, paired_examples

    voice = [(p, EMOTIONS.index(label)) for j in chosen for label, ps in voice_rows(speech[j]).items() for p in ps]
    words = [(p, EMOTIONS.index(label)) for j in chosen for p, label in zip(*_pair_text(validation_pairs[j]))]
    words += [(p, EMOTIONS.index(label)) for j in chosen for p, label in _ravdess_words(speech[j])]
    pools = {
        "audio": (np.array([p for p, _ in voice]), np.array([c for _, c in voice])),
        "text": (np.array([p for p, _ in words]), np.array([c for _, c in words])),
    }
    validation = paired_examples(pools, 2000, np.random.default_rng(seed + 100))
    result = fit(late, pools, validation, AttentionTrainConfig(seed=seed))
    return result.model, result.epoch


def _pair_text(pairs_of_fold) -> tuple[np.ndarray, list[str]]:
    rows, labels = pairs_of_fold
    return rows["text"], labels


def _ravdess_words(outputs: dict) -> list[tuple[np.ndarray, str]]:
    """The text expert's output on each RAVDESS file's words, with the file's label."""
    spoken = ~np.isnan(outputs["text"]).any(1)
    return [(outputs["text"][r], str(outputs["labels"][outputs["file_index"][r]])) for r in np.flatnonzero(spoken)]


def file_labels(fusion, outputs: dict, modalities) -> list[str]:
    """Each file's label: its segments' fused probabilities averaged as fusion.predict's summary does, weighted by
    their seconds and, for a LateFusion, its summary_weights ("none" without any segment)."""
    fused = fusion({m: outputs[m] for m in modalities})
    valid = ~np.isnan(fused).any(1)
    labels = []
    for f in range(len(outputs["paths"])):
        rows = (outputs["file_index"] == f) & valid
        if not rows.any():
            labels.append(NONE)
            continue
        weights = outputs["durations"][rows]
        if isinstance(fusion, LateFusion):
            weights = weights * fusion.summary_weights({m: outputs[m][rows] for m in modalities})
        mean = (fused[rows] * weights[:, None]).sum(0)
        labels.append(EMOTIONS[int(np.argmax(mean))] if weights.sum() > 0 else NONE)
    return labels


def preference(figures: dict) -> tuple[int, float]:
    """The order in which settings are chosen, the issue's two demands in turn: a fusion that never subtracts from
    the voice on RAVDESS (whose words carry no emotion), and of those the one whose words add most where they do
    carry emotion (the pairs); where every setting subtracts, the one that subtracts least."""
    margin = figures["ravdess voice+words"] - figures["ravdess voice"]
    return (1, figures["pairs voice+words"]) if margin >= 0 else (0, margin)


def ua(true, predicted) -> float:
    labels = (*EMOTIONS, NONE) if NONE in predicted else EMOTIONS
    return score(list(true), list(predicted), labels).ua


def voice_rows(outputs: dict) -> dict[str, list[np.ndarray]]:
    """{label: [the voice expert's output on each file's longest voiced segment]} of a fold's RAVDESS files."""
    pool: dict[str, list[np.ndarray]] = {}
    voiced = ~np.isnan(outputs["audio"]).any(1)
    for f, label in enumerate(outputs["labels"]):
        rows = np.flatnonzero((outputs["file_index"] == f) & voiced)
        if len(rows):
            pool.setdefault(str(label), []).append(outputs["audio"][rows[np.argmax(outputs["durations"][rows])]])
    return pool


def pairs(text: np.ndarray, text_labels, voices: dict, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """Each utterance with a voice of its label: {"audio": (N, C), "text": (N, C)} rows, and their labels."""
    audio, words, labels = [], [], []
    for p, label in zip(text, text_labels):
        if voices.get(label):
            for _ in range(PAIRS_PER_UTTERANCE):
                audio.append(voices[label][rng.integers(len(voices[label]))])
                words.append(p)
                labels.append(label)
    return {"audio": np.array(audio), "text": np.array(words)}, labels


def pair_scores(fusion: LateFusion, alone: LateFusion, rows: dict, labels) -> dict[str, float]:
    """UA of each expert alone (calibrated as shipped, `alone`) and of the two fused by `fusion`."""

    def top(p):
        return [EMOTIONS[k] for k in np.argmax(p, 1)]

    return {
        "voice": ua(labels, top(alone({"audio": rows["audio"]}))),
        "words": ua(labels, top(alone({"text": rows["text"]}))),
        "voice+words": ua(labels, top(fusion(rows))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--work", required=True, help="benchmarks/product_path.py's --work folder")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--view",
        choices=("alone", "together"),
        default="alone",
        help="the product path's outputs with each recording read alone (fusion.predict), or each actor's recordings "
        "together (Predictor.predict_together, fusion evaluate --by-speaker)",
    )
    parser.add_argument(
        "--save-learned", help="write the cross-attention fusion trained on every fold here (for fusion bundle)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    shared, work = Path(args.shared), Path(args.work)
    suffix = "-together" if args.view == "together" else ""
    folds = sorted(work.glob(f"fold*/outputs{suffix}.npz"))
    speech = [dict(np.load(f)) for f in folds]
    clips = [dict(np.load(f.with_name(f"clips{suffix}.npz"))) for f in folds]
    bundle = ExpertBundle.load(DEFAULT_CHECKPOINT, experts=["text"])
    late = bundle.late_fusion
    rng = np.random.default_rng(0)
    dev = meld(shared / "data/meld-text/dev_sent_emo.csv").examples
    train = meld(shared / "data/meld-text/train_sent_emo.csv").examples
    items = items_from_examples(train, context=False)
    config = bundle.text.members[0].config
    _, held = split_by_dialogue(items, config.validation_fraction, config.seed)
    validation = [train[i] for i in held]
    text_dev = bundle.text.predict_proba([e.text for e in dev])
    text_validation = bundle.text.predict_proba([e.text for e in validation])
    voices = [voice_rows(o) for o in speech]
    dev_pairs = [pairs(text_dev, [e.label for e in dev], v, rng) for v in voices]
    validation_pairs = [pairs(text_validation, [e.label for e in validation], v, rng) for v in voices]

    def measure(fusion: LateFusion, chosen: list[int], *, test: bool) -> dict:
        """The figures of these folds pooled (test: the pairs of MELD dev; else of MELD train's validation share, for
        choosing)."""
        out, guesses = {}, {}
        true = [str(x) for j in chosen for x in speech[j]["labels"]]
        for name, modalities in SUBSETS.items():
            if name != "voice+words+face":
                guesses[name] = [x for j in chosen for x in file_labels(fusion, speech[j], modalities)]
                out[f"ravdess {name}"] = ua(true, guesses[name])
        # the RAVDESS files whose label the words changed: how many, and how many of them were right before / after
        changed = [(t, a, b) for t, a, b in zip(true, guesses["voice"], guesses["voice+words"]) if a != b]
        out["words changed"] = len(changed)
        out["right before"] = sum(t == a for t, a, _ in changed)
        out["right after"] = sum(t == b for t, _, b in changed)
        rows = dev_pairs if test else validation_pairs
        joined = {m: np.concatenate([rows[j][0][m] for j in chosen]) for m in ("audio", "text")}
        labels = [x for j in chosen for x in rows[j][1]]
        out |= {f"pairs {n}": v for n, v in pair_scores(fusion, late, joined, labels).items()}
        return out

    report = {"command": " ".join(["python -m benchmarks.fusion_gates", *sys.argv[1:]]), "machine": describe_machine()}
    report["folds"] = len(folds)
    report["families"] = {}
    for family, settings in candidates(late).items():
        per_fold = []
        for k in range(len(folds)):
            others = [j for j in range(len(folds)) if j != k]
            choice = max(settings, key=lambda s: preference(measure(s[1], others, test=False)))
            per_fold.append({"fold": k, "setting": choice[0], **measure(choice[1], [k], test=True)})
        all_folds = max(settings, key=lambda s: preference(measure(s[1], list(range(len(folds))), test=True)))
        clip_true = [str(x) for c in clips for x in c["labels"]]
        clip_scores = {
            name: float(np.mean([t == g for t, g in zip(clip_true, guess)]))
            for name, modalities in SUBSETS.items()
            for guess in [[x for c in clips for x in file_labels(all_folds[1], c, modalities)]]
        }
        report["families"][family] = {
            "per_fold": per_fold,
            "mean": {
                key: float(np.mean([f[key] for f in per_fold])) for key in per_fold[0] if key not in ("fold", "setting")
            },
            "shipped_setting": all_folds[0],
            "clips": clip_scores,
            "clip_files": len(clip_true),
        }
    per_fold = []
    for k in range(len(folds)):
        model, epoch = learned(late, speech, validation_pairs, [j for j in range(len(folds)) if j != k], seed=k)
        per_fold.append({"fold": k, "setting": f"epoch {epoch}", **measure(model.fuse, [k], test=True)})
    model, epoch = learned(late, speech, validation_pairs, list(range(len(folds))), seed=0)
    fusion = model.fuse
    if args.save_learned:
        training = {"epoch": epoch, "folds": len(folds), "command": report["command"]}
        model.save(args.save_learned, extra={"training": training})
    clip_true = [str(x) for c in clips for x in c["labels"]]
    report["families"]["cross-attention (learned, modality dropout)"] = {
        "per_fold": per_fold,
        "mean": {
            key: float(np.mean([f[key] for f in per_fold])) for key in per_fold[0] if key not in ("fold", "setting")
        },
        "shipped_setting": f"epoch {epoch}",
        "clips": {
            name: float(
                np.mean([t == g for t, g in zip(clip_true, [x for c in clips for x in file_labels(fusion, c, m)])])
            )
            for name, m in SUBSETS.items()
        },
        "clip_files": len(clip_true),
    }
    report["wall_seconds"] = time.perf_counter() - started
    write_results(report, Path(args.out), markdown)


def markdown(report: dict) -> str:
    keys = ["ravdess voice", "ravdess voice+words", "pairs voice", "pairs words", "pairs voice+words"]
    counts = ["words changed", "right before", "right after"]
    lines = [
        "# Fusions out of fold: what the words and the face add to the voice",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall time {report['wall_seconds']:.0f} s (the experts' outputs read from "
        "benchmarks/product_path.py's run). UA (macro recall), 7 classes, mean over the "
        f"{report['folds']} folds; each fold's setting chosen on the other folds.",
        "",
        "| fusion | settings chosen per fold | "
        + " | ".join(keys)
        + " | RAVDESS files the words changed (right before / after) | clips: voice / +words / +face |",
        "|---|---|" + "---|" * len(keys) + "---|---|",
    ]
    for family, r in report["families"].items():
        settings = ", ".join(f["setting"] for f in r["per_fold"])
        clips = " / ".join(f"{100 * r['clips'][n]:.0f}%" for n in SUBSETS)
        cells = " | ".join(f"{100 * r['mean'][k]:.1f}" for k in keys)
        n, before, after = (sum(f[k] for f in r["per_fold"]) for k in counts)
        lines.append(
            f"| {family} | {settings} (all folds: {r['shipped_setting']}) | {cells} | {n} ({before} / {after}) "
            f"| {clips} |"
        )
    lines += [
        "",
        "RAVDESS: the fold's actors, every speech file through Predictor.predict with the fold's voice expert. Pairs:",
        "MELD dev utterances, each with a voice of its label from the fold (chosen on pairs of MELD train's",
        "validation share). Clips: the 11 audio-visual clips, each through the fold bundle that never heard its actor,",
        "with the setting chosen on all folds.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
