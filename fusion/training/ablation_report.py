"""The report of a modality ablation: ablation.json (the whole record), ablation.md (tables) and ablation.png (bars).

Everything here reads the record that :func:`fusion.training.ablation.ablate_experts` builds (plain JSON values), so a
report can be redrawn from an ablation.json alone.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np

from fusion.training.metrics import METRICS

METRIC_NAMES = {"ua": "UA", "wa": "WA", "macro_f1": "macro-F1", "weighted_f1": "weighted F1"}


def write(record: dict, out: str | os.PathLike) -> None:
    """ablation.json (everything), ablation.md (the tables, command, machine, wall time), ablation.png (bars)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "ablation.md").write_text(markdown(record))
    plot(record, out / "ablation.png")


def markdown(record: dict) -> str:
    metric = METRIC_NAMES[record["metric"]]
    data, config = record["data"], record["config"]
    confidence = f"{config['confidence'] * 100:.0f}%"
    lines = [
        f"# Modality ablation: {', '.join(data['specs'])}",
        "",
        f"Command: `{record['command']}`",
        "",
        *_experts_header(record),
        "",
        "Test speakers per fold (examples): " + "; ".join(_fold_summary(fold) for fold in data["folds"]),
        "",
        *_legend(record),
        "",
        f"| mode | modalities | UA | WA | macro-F1 | weighted F1 | pooled {metric} [{confidence} CI] |"
        f" Δ {metric} vs audio [{confidence} CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        cells = " | ".join(f"{row['mean'][m] * 100:.1f} ± {row['std'][m] * 100:.1f}" for m in METRICS)
        pooled = _interval(row["pooled"][record["metric"]], signed=False)
        difference = _difference(row, record["metric"], record["baseline"])
        lines.append(f"| {row['mode']} | {row['subset']} | {cells} | {pooled} | {difference} |")
    labels = data["labels"]
    lines += [
        "",
        "Recall per class, % (mean over runs; a class counts in a run when its fold tests it):",
        "",
        "| mode | modalities | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for row in record["rows"]:
        cells = " | ".join(f"{row['recall'][label] * 100:.1f}" if label in row["recall"] else "-" for label in labels)
        lines.append(f"| {row['mode']} | {row['subset']} | {cells} |")
    lines += ["", "Every fold and seed, the pooled metrics and all predictions: `ablation.json`; bars: `ablation.png`."]
    return "\n".join(lines) + "\n"


def _experts_header(record: dict) -> list[str]:
    """Machine, wall time, data and outputs of an experts bundle's ablation (fusion.training.expert_ablation)."""
    data, config, bundle = record["data"], record["config"], record["bundle"]
    lines = [
        f"Machine: {record['machine']}. Wall time {record['wall_seconds'] / 60:.1f} min, the experts' outputs"
        " included (read from the cache where it had them); nothing is trained.",
        "",
        _data_line(data)
        + " Recordings where the experts find each modality: "
        + ", ".join(f"{m} {n}" for m, n in data["with_modality"].items())
        + ".",
        "",
        f"Model: the experts bundle `{bundle['path']}` (id {bundle['id']}), every subset of its experts pooled by"
        " its late fusion (temperatures "
        + ", ".join(f"{m} {t:.2f}" for m, t in bundle["late_fusion"]["temperatures"].items())
        + "; weights "
        + ", ".join(f"{m} {w:g}" for m, w in bundle["late_fusion"]["weights"].items())
        + "). Each expert was trained on its own corpus, apart from the others, so a model trained without a"
        " modality is the same experts less that one: retraining and dropping are one row, **experts**.",
    ]
    for modality, replaced in record["out_of_fold"].items():
        lines += [
            "",
            f"Out of fold: the {modality} expert's outputs on {replaced['recordings']} of {data['examples']}"
            f" recordings come from its recipe trained without their speakers (seeds "
            + ", ".join(map(str, replaced["seeds"]))
            + "; "
            + ", ".join(f"`{folder}`" for folder in replaced["folders"])
            + "); each seed is one run. The rest are the bundle's own expert's.",
        ]
    if not record["out_of_fold"]:
        lines += ["", "One run: the bundle's experts as they are."]
    lines += [
        "",
        f"The {len(data['folds'])} speaker-independent folds (seed {config['fold_seed']}) only group the test"
        " examples for the mean ± standard deviation over runs.",
    ]
    return lines


def _data_line(data: dict) -> str:
    return (
        f"Data: {data['examples']} examples from {data['speakers']} speakers; classes "
        + ", ".join(f"{label} {data['class_counts'][label]}" for label in data["labels"])
        + f"; modalities ablated: {', '.join(data['modalities'])}."
    )


def _legend(record: dict) -> list[str]:
    """What the modes and columns of the table mean, as markdown bullets."""
    metric = METRIC_NAMES[record["metric"]]
    config = record["config"]
    confidence = f"{config['confidence'] * 100:.0f}%"
    modes = {row["mode"] for row in record["rows"]}
    legend = []
    if "experts" in modes:
        legend.append("- **experts**: the bundle's experts of these modalities, pooled by its late fusion.")
    if "retrain" in modes:
        legend.append("- **retrain**: a model trained and tested with only these modalities.")
    if "drop" in modes:
        legend.append(
            f"- **drop**: the model trained on {'+'.join(record['data']['modalities'])}, tested with only these"
            " modalities."
        )
    legend += [
        "- UA = macro recall, WA = accuracy, macro-F1, weighted F1 (F1 per class weighted by support); in %, mean ±"
        " standard deviation over the seed x fold runs, each scored on its fold's test examples.",
        f"- pooled {metric}: each seed's predictions of every example (out of fold: each tested once) scored over"
        f" all examples, averaged over seeds, [with a {confidence} percentile bootstrap interval over test"
        f" examples, {config['bootstrap']} resamples].",
    ]
    if "audio" in record["data"]["modalities"]:
        legend.append(
            f"- Δ {metric}: pooled {metric} minus audio alone's in the same mode, [{confidence} paired bootstrap"
            " interval: the same resampled examples for both]. Pooled over folds, it can differ slightly from the"
            " difference of the means."
        )
    else:
        legend.append(f"- Δ {metric}: none, since the data has no audio to compare with.")
    return legend


def _short_spec(spec: str) -> str:
    """ "meld=../data/train_sent_emo.csv:../clips" -> "meld=train_sent_emo.csv"."""
    kind, _, path = spec.partition("=")
    return f"{kind}={Path(path.partition(':')[0]).name}"


def _fold_summary(fold: dict, *, most: int = 12) -> str:
    """ "0: ravdess:03, ravdess:07 (120)", or the number of speakers when there are more than `most`."""
    speakers = fold["test_speakers"]
    named = ", ".join(speakers) if len(speakers) <= most else f"{len(speakers)} speakers"
    return f"{fold['fold']}: {named} ({fold['examples']})"


def _difference(row: dict, metric: str, baseline: str) -> str:
    difference = row["difference_to_audio"]
    if difference is None:
        return "baseline" if row["subset"] == baseline else "-"
    return _interval(difference[metric], signed=True)


def _interval(estimate: dict[str, float], *, signed: bool) -> str:
    """{"value", "low", "high"} fractions -> "+4.2 [-1.0, +9.8]" in points."""
    style = "+.1f" if signed else ".1f"
    value, low, high = (format(estimate[k] * 100, style) for k in ("value", "low", "high"))
    return f"{value} [{low}, {high}]"


def plot(record: dict, path: str | os.PathLike) -> None:
    """Bars of each row's pooled metric and, where there is an audio-alone baseline, of the difference to it,
    both with their bootstrap intervals."""
    metric = record["metric"]
    rows = record["rows"]
    names = [f"{row['mode']}: {row['subset']}" for row in rows]
    colours = ["tab:blue" if row["mode"] == "retrain" else "tab:orange" for row in rows]
    panels = [("pooled", f"{METRIC_NAMES[metric]} (%), pooled out-of-fold")]
    if any(row["difference_to_audio"] is not None for row in rows):
        panels.append(("difference_to_audio", f"Δ {METRIC_NAMES[metric]} vs audio alone (points)"))
    from matplotlib.figure import Figure  # imported here, so that commands without plots do not load matplotlib

    figure = Figure(figsize=(5.5 * len(panels), 0.45 * len(rows) + 1.8), layout="constrained")
    axes_list = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for axes, (key, title) in zip(axes_list, panels):
        present = [(i, row[key][metric]) for i, row in enumerate(rows) if row[key] is not None]
        positions = [i for i, _ in present]
        values = np.array([v["value"] for _, v in present]) * 100
        errors = np.array([[v["value"] - v["low"], v["high"] - v["value"]] for _, v in present]).T * 100
        axes.barh(positions, values, xerr=errors.reshape(2, -1), color=[colours[i] for i in positions], capsize=3)
        axes.set_title(title, fontsize=10)
        axes.axvline(0, color="black", linewidth=0.8)
        axes.grid(axis="x", alpha=0.3)
    axes_list[0].set_yticks(range(len(rows)), names)
    axes_list[0].invert_yaxis()
    confidence = record["config"]["confidence"] * 100
    corpora = ", ".join(_short_spec(spec) for spec in record["data"]["specs"])
    title = f"{corpora}: bars with {confidence:.0f}% bootstrap intervals over test examples"
    figure.suptitle("\n".join(textwrap.wrap(title, width=60 * len(panels))), fontsize=9)
    figure.savefig(path, dpi=120)
