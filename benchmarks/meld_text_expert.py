"""MELD dev scores of the text expert (3 seeds) beside TF-IDF + LR and a frozen MiniLM + LR probe on the same split.

    OMP_NUM_THREADS=1 python -m benchmarks.meld_text_expert --threads 1 --seeds 0 1 2 \
        --compare frozen full lora-fp32 lora-context --runs /work/cache/text/runs --cache /work/cache/text \
        --save runs/text_expert --out benchmarks/results/meld_text_expert

Each seed draws its own dialogue-disjoint 10% of MELD train for choosing the epoch; the expert and both baselines
train on the rest of MELD train, and MELD dev is only scored. Every finished run is kept in --runs, so running the
command again skips it (the benchmark is resumable); results.md and results.json are rewritten after each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.child import describe_machine, write_results
from encoders.loading import DEFAULT_TEXT_MODEL, TEXT_ENV, choose_model
from encoders.runtime import PRECISIONS
from fusion.experts import text as expert
from fusion.labels import EMOTIONS
from fusion.storage import CONFIG_FILE, WEIGHTS_FILE, save_weights
from fusion.training import text as text_training
from fusion.training.datasets import meld
from fusion.training.loop import warmup_linear
from fusion.training.metrics import score

# Settings that differ from TextExpertConfig's defaults. --shipped names the one trained with every seed; --compare
# the ones trained with the first seed only. They are compared on the validation part of MELD train, never on dev.
VARIANTS: dict[str, dict] = {
    "lora": {},
    "lora-6epochs": {"epochs": 6},
    "lora-smoothing": {"label_smoothing": 0.1},
    "lora-lr2e-3": {"lr": 2e-3},
    "lora-r32": {"lora_r": 32, "lora_alpha": 64},
    "lora-norms": {"lora_norms": True},
    "lora-context": {"context": True},
    "lora-fp32": {"precision": "fp32"},
    "full": {"mode": "full", "lr": 5e-5},
    "frozen": {"mode": "frozen", "head_lr": 3e-3},
}
PROBE_C = (0.1, 1.0, 10.0)  # the baselines' inverse regularisation strengths, chosen on the validation part
SPEED_UTTERANCES = 1024  # training utterances timed per precision (inference: all of MELD dev)
PROBE_BATCH = 64  # utterances per forward pass of the frozen probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="../shared/data/meld-text/train_sent_emo.csv")
    parser.add_argument("--dev", default="../shared/data/meld-text/dev_sent_emo.csv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shipped", choices=VARIANTS, default="lora", help="the variant trained with every seed")
    parser.add_argument("--compare", nargs="*", default=[], choices=VARIANTS, help="variants for the first seed")
    parser.add_argument("--runs", required=True, help="folder for each run's checkpoint and scores (resumable)")
    parser.add_argument("--cache", help="folder for tokenised data and frozen embeddings")
    parser.add_argument("--save", help="copy the shipped variant's first-seed checkpoint here")
    parser.add_argument(
        "--members", type=int, default=1, help="ensemble members per seed of the shipped variant (default 1)"
    )
    parser.add_argument(
        "--distil",
        type=int,
        default=0,
        help="per seed, this many members distilled from the seed's --members ensemble (TextExpertConfig.teacher)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="benchmarks/results/meld_text_expert")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    train, dev = meld(args.train).examples, meld(args.dev).examples
    runs = Path(args.runs)
    report = {
        "command": " ".join(["python -m benchmarks.meld_text_expert", *sys.argv[1:]]),
        "machine": describe_machine(),
        "train": args.train,
        "dev": args.dev,
        "n_dev": len(dev),
        "shipped": args.shipped,
        "members": args.members,
        "runs": {},
        "ensembles": {},
        "distilled": {},
        "baselines": {},
    }
    report["speed"] = measure_speed(train, dev)
    jobs = [(name, args.seeds[0]) for name in args.compare] + [(args.shipped, seed) for seed in args.seeds]
    for name, seed in dict.fromkeys(jobs):
        config = expert.TextExpertConfig(**VARIANTS[name], seed=seed)
        report["runs"][f"{name}/{seed}"] = run_expert(train, dev, config, runs / f"{name}-{seed}", args.cache)
        if name == args.shipped:
            report["baselines"][str(seed)] = run_baselines(train, dev, seed, runs, args.cache)
            if args.members > 1:
                folders = [runs / f"{name}-{seed}"] + [
                    runs / f"{name}-{seed}-member{m}" for m in range(1, args.members)
                ]
                report["ensembles"][str(seed)] = run_ensemble(train, dev, config, folders, args.cache)
        write_results(report, Path(args.out), markdown)
    for seed in args.seeds if args.distil else []:
        teacher = write_teacher(runs / f"teacher-{args.shipped}-{seed}", runs, args.shipped, seed, args.members)
        config = expert.TextExpertConfig(**VARIANTS[args.shipped], seed=seed, teacher=str(teacher.resolve()))
        name = f"{args.shipped}-distilled"
        folders = [runs / f"{name}-{seed}"] + [runs / f"{name}-{seed}-member{m}" for m in range(1, args.distil)]
        report["distilled"][str(seed)] = run_ensemble(train, dev, config, folders, args.cache)
        write_results(report, Path(args.out), markdown)
    report["wall_seconds"] = time.perf_counter() - started  # this invocation; runs finished earlier are not timed
    write_results(report, Path(args.out), markdown)
    if args.save:
        shutil.copytree(runs / f"{args.shipped}-{args.seeds[0]}", args.save, dirs_exist_ok=True, ignore=_not_shipped)
        print(f"shipped checkpoint: {args.save}")


def _not_shipped(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n not in (WEIGHTS_FILE, CONFIG_FILE)]


def run_expert(train, dev, config: expert.TextExpertConfig, folder: Path, cache: str | None) -> dict:
    """Train (or find finished) one expert run and score it on dev -> its record."""
    done = folder / "scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    result = text_training.train_text_expert(train, folder, config, resume=True, cache=cache)
    model = expert.TextExpert.load(folder)
    probabilities = model.predict_items(text_training.items_from_examples(dev, context=config.context))
    record = {
        "config": dataclasses.asdict(config),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "train_minutes": result.train_seconds / 60,
        "checkpoint_bytes": (folder / WEIGHTS_FILE).stat().st_size,
        "dev": scores(dev, probabilities),
    }
    done.write_text(json.dumps(record, indent=2))
    return record


def run_ensemble(train, dev, config: expert.TextExpertConfig, folders: list[Path], cache: str | None) -> dict:
    """Members 0, 1, ... of config's seed (folders[m] holds member m; member 0 is the single expert's run) ->
    validation and dev scores of the ensemble of the first k members, for every k."""
    items = text_training.items_from_examples(train, context=config.context)
    _, held = text_training.split_by_dialogue(items, config.validation_fraction, config.seed)
    validation = [train[i] for i in held]
    dev_items = text_training.items_from_examples(dev, context=config.context)
    val_items = [items[i] for i in held]
    probabilities, minutes = [], []
    for member, folder in enumerate(folders):
        run_expert(train, dev, dataclasses.replace(config, member=member), folder, cache)
        saved = folder / "probabilities.npz"
        if not saved.is_file():
            model = expert.TextExpert.load(folder)
            stored = expert.TextExpert.load(_stored_as_shipped(folder))
            np.savez(
                saved,
                validation=model.predict_items(val_items),
                dev=model.predict_items(dev_items),
                dev_stored=stored.predict_items(dev_items),
            )
        probabilities.append(dict(np.load(saved)))
        minutes.append(json.loads((folder / "scores.json").read_text())["train_minutes"])
    record = {"train_minutes": minutes, "by_size": {}}
    for k in range(1, len(folders) + 1):
        record["by_size"][str(k)] = {
            part: scores(examples, np.mean([p[part] for p in probabilities[:k]], axis=0))
            for part, examples in (("validation", validation), ("dev", dev), ("dev_stored", dev))
        }
    return record


def write_teacher(folder: Path, runs: Path, name: str, seed: int, members: int) -> Path:
    """An ensemble folder (expert.TextEnsemble) naming the seed's `members` runs of variant `name` in runs."""
    names = [f"../{name}-{seed}"] + [f"../{name}-{seed}-member{m}" for m in range(1, members)]
    return text_training.write_ensemble(folder, names)


def _stored_as_shipped(folder: Path) -> Path:
    """A copy of a run's checkpoint with its weights in fusion.training.text.STORED_DTYPE, as save_checkpoint now
    writes them (runs saved before that stored float32): what a shipped ensemble holds."""
    from safetensors.torch import load_file

    copy = folder / "stored"
    if not (copy / WEIGHTS_FILE).is_file():
        copy.mkdir(exist_ok=True)
        save_weights(
            copy / WEIGHTS_FILE,
            load_file(folder / WEIGHTS_FILE),
            dtype=text_training.STORED_DTYPE,
            metadata={"format_version": str(expert.FORMAT_VERSION)},
        )
        shutil.copy(folder / CONFIG_FILE, copy / CONFIG_FILE)
    return copy


def scores(examples, probabilities: np.ndarray) -> dict:
    predicted = [EMOTIONS[i] for i in probabilities.argmax(1)]
    return score([e.label for e in examples], predicted, EMOTIONS).as_dict()


def run_baselines(train, dev, seed: int, runs: Path, cache: str | None) -> dict:
    """TF-IDF + LR and frozen mean-pooled MiniLM + LR (scikit-learn, no class weights), on seed's training part.

    Each one's C (PROBE_C) is the one with the best weighted F1 on the seed's validation part, as for the expert.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    items = text_training.items_from_examples(train, context=False)
    keep, held = text_training.split_by_dialogue(items, expert.TextExpertConfig.validation_fraction, seed)
    labels = np.array([e.label for e in train])
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([train[i].text for i in keep])
    words, dev_words = tfidf.transform([e.text for e in train]), tfidf.transform([e.text for e in dev])
    vectors = frozen_embeddings([e.text for e in train + dev], Path(cache or runs) / "frozen-minilm.npy")
    vectors, dev_vectors = vectors[: len(train)], vectors[len(train) :]
    return {
        "tfidf_lr": logistic_regression(words[keep], labels[keep], words[held], labels[held], dev_words, dev),
        "frozen_minilm_lr": logistic_regression(
            vectors[keep], labels[keep], vectors[held], labels[held], dev_vectors, dev
        ),
    }


def logistic_regression(x, y, x_validation, y_validation, x_dev, dev) -> dict:
    """Fit one LR per C in PROBE_C on (x, y), keep the best on validation by weighted F1 -> its dev scores and C."""
    from sklearn.linear_model import LogisticRegression

    fits = [LogisticRegression(C=c, max_iter=3000).fit(x, y) for c in PROBE_C]
    chosen = max(fits, key=lambda f: score(list(y_validation), list(f.predict(x_validation)), EMOTIONS).weighted_f1)
    return scores(dev, _in_emotion_order(chosen, chosen.predict_proba(x_dev))) | {"C": chosen.C}


def _in_emotion_order(classifier, probabilities: np.ndarray) -> np.ndarray:
    """scikit-learn's columns (sorted class names) -> EMOTIONS order; classes it never saw get 0."""
    ordered = np.zeros((len(probabilities), len(EMOTIONS)))
    for column, label in enumerate(classifier.classes_):
        ordered[:, EMOTIONS.index(label)] = probabilities[:, column]
    return ordered


@torch.inference_mode()
def frozen_embeddings(texts: list[str], path: Path) -> np.ndarray:
    """(len(texts), 384) sentence vectors of the untuned model: the mean of its tokens (sentence-transformers' way)."""
    if path.is_file():
        vectors = np.load(path)
        if len(vectors) == len(texts):
            return vectors
    from encoders.text import WordEncoder

    words = WordEncoder()
    rows = []
    for first in range(0, len(texts), PROBE_BATCH):
        batch = words.tokenizer(texts[first : first + PROBE_BATCH], padding=True, truncation=True, return_tensors="pt")
        hidden = words.model(**batch).last_hidden_state  # (batch, tokens, dim)
        mask = batch["attention_mask"][..., None].float()
        rows.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    vectors = np.concatenate(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def measure_speed(train, dev) -> dict:
    """Utterances/s of LoRA training (one epoch of SPEED_UTTERANCES, batches as in training, no validation) and
    dev inference, fp32 vs bf16."""
    from encoders.text import _load_bert

    items = text_training.items_from_examples(train[:SPEED_UTTERANCES], context=False)
    dev_items = text_training.items_from_examples(dev, context=False)
    device = torch.device("cpu")
    speeds = {}
    for precision in PRECISIONS:
        config = expert.TextExpertConfig(precision=precision)
        tokenizer, bert = _load_bert(choose_model(None, env_var=TEXT_ENV, default=DEFAULT_TEXT_MODEL))
        model = text_training.build_model(bert, config)
        optimiser = text_training._optimiser(model, config)
        steps = math.ceil(len(items) / config.batch_size)
        run = _UntimedValidation(
            expert.encode(tokenizer, items, config.max_tokens),
            torch.tensor([item.label for item in items]),
            None,
            ([], []),
            tokenizer.pad_token_id,
            config,
            lambda: None,
            model=model,
            optimizer=optimiser,
            schedule=warmup_linear(optimiser, total_steps=steps, warmup_fraction=config.warmup),
            device=device,
            generator=torch.Generator(),
            bf16=precision == "bf16",
        )
        started = time.perf_counter()
        run.run(1)
        train_seconds = time.perf_counter() - started
        dev_encoded = expert.encode(tokenizer, dev_items, config.max_tokens)
        started = time.perf_counter()
        expert.predict_logits(model, dev_encoded, tokenizer.pad_token_id, device, precision)
        speeds[precision] = {
            "train_utterances_per_s": len(items) / train_seconds,
            "inference_utterances_per_s": len(dev_items) / (time.perf_counter() - started),
        }
    return speeds


class _UntimedValidation(text_training.TextFit):
    """The text expert's training loop without validation or checkpoints: training alone is timed."""

    def validate(self) -> None:
        return None


def _validation_weighted_f1(record: dict) -> float:
    """A training history record's validation weighted F1: flat in today's records, under "validation" in those of
    runs finished before the training loop was shared (kept in --runs)."""
    return record["weighted_f1"] if "weighted_f1" in record else record["validation"]["weighted_f1"]


def _mean_std(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if values else "-"


def markdown(report: dict) -> str:
    name = report["shipped"]
    shipped = {k: v for k, v in report["runs"].items() if k.startswith(f"{name}/")}
    lines = [
        "# Text expert on MELD dev",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}. Wall time of the last invocation: "
        f"{report.get('wall_seconds', float('nan')) / 60:.1f} min (runs that earlier invocations finished are "
        "reused from --runs; each run's training time is in the tables).",
        "",
        f"MELD dev: {report['n_dev']} utterances, scored only (never used to choose epochs or settings). MELD's train "
        "and dev splits share the six main speakers of *Friends*, so these figures do not measure unseen speakers.",
        "",
        f"Trained with every seed (`--shipped`): `{name}` ({VARIANTS[name] or 'TextExpertConfig defaults'}); "
        "the epoch is the one with the best "
        "weighted F1 on a dialogue-disjoint 10% of MELD train (drawn by the seed); the loss is unweighted "
        "cross-entropy, so the head optimises weighted F1 (it leans "
        "on neutral, 47% of dev) rather than UA.",
        "",
        "## Per seed (MELD dev, %)",
        "",
        "| seed | method | weighted F1 | macro-F1 | UA | WA | best epoch | training min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, run in shipped.items():
        seed = key.split("/")[1]
        d = run["dev"]
        lines.append(
            f"| {seed} | text expert ({name}) | {100 * d['weighted_f1']:.1f} | {100 * d['macro_f1']:.1f} | "
            f"{100 * d['ua']:.1f} | {100 * d['wa']:.1f} | {run['best_epoch']} | {run['train_minutes']:.1f} |"
        )
        for baseline, b in report["baselines"].get(seed, {}).items():
            lines.append(
                f"| {seed} | {baseline} (C={b['C']}) | {100 * b['weighted_f1']:.1f} | {100 * b['macro_f1']:.1f} | "
                f"{100 * b['ua']:.1f} | {100 * b['wa']:.1f} | | |"
            )
    lines += [
        "",
        "## Mean ± std over seeds (%)",
        "",
        "| method | weighted F1 | macro-F1 | UA | WA |",
        "|---|---|---|---|---|",
    ]
    methods = {f"text expert ({name})": [r["dev"] for r in shipped.values()]}
    for baseline in ("tfidf_lr", "frozen_minilm_lr"):
        methods[baseline] = [b[baseline] for b in report["baselines"].values()]
    for method, runs in methods.items():
        cells = [_mean_std([r[m] for r in runs]) for m in ("weighted_f1", "macro_f1", "ua", "wa")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Recall per class, text expert, mean ± std (%):", "", "| " + " | ".join(EMOTIONS) + " |"]
    lines.append("|" + "---|" * len(EMOTIONS))
    lines.append(
        "| " + " | ".join(_mean_std([r["dev"]["recall"][e] for r in shipped.values()]) for e in EMOTIONS) + " |"
    )
    lines += [
        "",
        "## Variants (first seed; chosen by validation weighted F1, dev only reported)",
        "",
        "A variant would replace the defaults only with a validation weighted F1 at least 0.5 points higher and a "
        "model.safetensors under 5 MB (one standard error of weighted F1 on about 1000 validation utterances is "
        "about 1.5 points).",
        "",
        "| variant | settings | validation weighted F1 | dev weighted F1 | dev UA | best epoch | training min | "
        "model.safetensors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    first = {}
    for key, run in report["runs"].items():
        first.setdefault(key.split("/")[0], run)
    for variant, run in first.items():
        validation = _validation_weighted_f1(run["history"][run["best_epoch"] - 1])
        lines.append(
            f"| {variant} | {VARIANTS[variant]} | {100 * validation:.1f} | {100 * run['dev']['weighted_f1']:.1f} | "
            f"{100 * run['dev']['ua']:.1f} | {run['best_epoch']} | {run['train_minutes']:.1f} | "
            f"{run['checkpoint_bytes'] / 1e6:.1f} MB |"
        )
    if report.get("ensembles"):
        lines += ensemble_markdown(
            report["ensembles"],
            f"## Ensembles of {report['shipped']} members (mean probability; members of a seed share its validation "
            "split)",
            "Member m > 0 of seed s is trained from seed s + 1000 m (TextExpertConfig.member); member 0 is the single "
            "expert above. Validation = the seed's dialogue-disjoint 10% of MELD train; dev is only reported.",
        )
    if report.get("distilled"):
        lines += ensemble_markdown(
            report["distilled"],
            f"## Distilled: {report['shipped']} members trained on the labels and on the probabilities of the seed's "
            f"{report['members']}-member ensemble",
            "Loss: (1 - w) x cross-entropy with the labels + w x cross-entropy with the teacher ensemble's "
            f"probabilities on the training utterances, w = {expert.TextExpertConfig.distill_weight} "
            "(TextExpertConfig.teacher, Hinton et al. 2015); the same split, epochs and member seeds as above.",
        )
    if "speed" in report:
        lines += ["", "## Speed (utterances/s, LoRA)", "", "| precision | training | inference |", "|---|---|---|"]
        for precision, s in report["speed"].items():
            lines.append(f"| {precision} | {s['train_utterances_per_s']:.0f} | {s['inference_utterances_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def ensemble_markdown(ensembles: dict, title: str, explanation: str) -> list[str]:
    sizes = sorted({k for e in ensembles.values() for k in e["by_size"]}, key=int)
    lines = [
        "",
        title,
        "",
        explanation,
        "",
        "| members | validation weighted F1 | dev weighted F1 | dev macro-F1 | dev UA | dev WA | dev weighted F1, "
        f"weights stored in {str(text_training.STORED_DTYPE).removeprefix('torch.')} |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in sizes:
        runs = [e["by_size"][k] for e in ensembles.values() if k in e["by_size"]]
        cells = [_mean_std([r["validation"]["weighted_f1"] for r in runs])]
        cells += [_mean_std([r["dev"][m] for r in runs]) for m in ("weighted_f1", "macro_f1", "ua", "wa")]
        cells += [_mean_std([r["dev_stored"]["weighted_f1"] for r in runs])]
        lines.append(f"| {k} ({len(runs)} seeds) | " + " | ".join(cells) + " |")
    largest = [e["by_size"][sizes[-1]]["dev"] for e in ensembles.values() if sizes[-1] in e["by_size"]]
    lines += ["", f"Per seed, {sizes[-1]} members, dev weighted F1: "]
    lines[-1] += ", ".join(
        f"seed {seed}: {100 * e['by_size'][sizes[-1]]['dev']['weighted_f1']:.1f}" for seed, e in ensembles.items()
    )
    lines += ["", f"Recall per class, {sizes[-1]} members, mean ± std (%):", "", "| " + " | ".join(EMOTIONS) + " |"]
    lines.append("|" + "---|" * len(EMOTIONS))
    lines.append("| " + " | ".join(_mean_std([r["recall"][e] for r in largest]) for e in EMOTIONS) + " |")
    return lines


if __name__ == "__main__":
    main()
