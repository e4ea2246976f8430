"""Training the text expert (fusion.experts.text) on transcripts such as MELD, and `fusion train-expert text`.

    fusion train-expert text --data meld=$FUSION_SHARED/data/meld-text/train_sent_emo.csv --out runs/text_expert

Training tunes the BERT model (``lora``: low-rank adapters through ``peft``; ``full``: every weight; ``frozen``:
none) together with a linear head through the one loop (:class:`fusion.training.loop.Fit`), keeps the epoch with the
best weighted F1 on a dialogue-disjoint validation part of the training data, and saves its state every epoch so
``--resume`` continues an interrupted run. Several members of one recipe make an ensemble; a teacher's probabilities
can be distilled (Hinton et al., 2015).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encoders.loading import DEFAULT_TEXT_MODEL, TEXT_ENV, choose_model, portable_name
from encoders.runtime import PRECISIONS, pick_device
from fusion.arguments import positive_float, positive_int
from fusion.experts.text import (
    ENSEMBLE_FILE,
    FORMAT_VERSION,
    MODES,
    Item,
    TextExpertConfig,
    TextExpertModel,
    add_lora,
    collate,
    encode,
    load_expert,
    predict_logits,
)
from fusion.labels import EMOTIONS
from fusion.storage import CONFIG_FILE, WEIGHTS_FILE, save_weights, write_atomic
from fusion.training.loop import STATE_FILE, Fit, warmup_linear
from fusion.training.metrics import score

# A LoRA checkpoint's weights are stored in this type (2.7 MB per member in float32, 1.35 MB in float16); the
# dev scores of the MELD benchmark's ensembles moved by under 0.1 point (benchmarks/results/meld_text_expert).
STORED_DTYPE = torch.float16
# Training batches are cut from runs of this many batches' worth of shuffled utterances, sorted by length inside
# the run: padding stays small while the batch order stays random.
BUCKET_BATCHES = 50


def items_from_examples(examples: Sequence, *, context: bool) -> list[Item]:
    """fusion.training.datasets Examples with text -> Items; MELD's "dia{D}_utt{U}" ids give dialogues and previous
    turns."""
    by_id = {(e.dataset, e.split, e.utterance_id): e for e in examples if e.utterance_id}
    items = []
    for number, example in enumerate(examples):
        if not example.text:
            raise ValueError(f"{example.path}: the text expert needs a transcript, this example has none")
        dialogue, previous = f"{example.path}#{number}", ()
        if example.utterance_id:
            dia, _, utt = example.utterance_id.removeprefix("dia").partition("_utt")
            dialogue = f"{example.dataset}:{example.split}:{dia}"
            before = by_id.get((example.dataset, example.split, f"dia{dia}_utt{int(utt) - 1}"))
            if context and before is not None:
                previous = tuple(before.text.split())
        items.append(Item(tuple(example.text.split()), previous, EMOTIONS.index(example.label), dialogue))
    return items


def split_by_dialogue(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """-> (training indices, validation indices): about fraction of the dialogues, drawn by seed, validate."""
    dialogues = sorted({item.dialogue for item in items})
    order = np.random.default_rng(seed).permutation(len(dialogues))
    held = {dialogues[i] for i in order[: max(1, round(fraction * len(dialogues)))]}
    train = [i for i, item in enumerate(items) if item.dialogue not in held]
    return train, [i for i, item in enumerate(items) if item.dialogue in held]


def training_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Indices in random batches of similar lengths (dynamic padding): shuffled, sorted within runs of batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    run = batch_size * BUCKET_BATCHES
    batches = []
    for first in range(0, len(order), run):
        sorted_run = sorted(order[first : first + run], key=lambda i: lengths[i])
        batches += [sorted_run[i : i + batch_size] for i in range(0, len(sorted_run), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def build_model(bert: nn.Module, config: TextExpertConfig) -> TextExpertModel:
    """The trainable model for config.mode around a freshly loaded base BERT model."""
    dim = bert.config.hidden_size
    if config.mode == "lora":
        bert = add_lora(bert, config.lora)  # peft freezes the base weights
        for name, parameter in bert.named_parameters():
            if config.lora_norms and "pooler" not in name and (name.endswith(".bias") or "LayerNorm" in name):
                parameter.requires_grad_(True)
    else:
        bert.requires_grad_(config.mode == "full")
    return TextExpertModel(bert, dim, config.head_dropout)


def trainable_state(model: TextExpertModel) -> dict[str, torch.Tensor]:
    """The weights a checkpoint stores: the head, plus the adapters (lora; with lora_norms also the biases and
    LayerNorms) or every encoder weight (full)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(model: TextExpertModel, config: TextExpertConfig, base: str, directory: Path) -> None:
    """Write model.safetensors (trainable weights only) and config.json, each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(
        directory / WEIGHTS_FILE,
        trainable_state(model),
        # adapters and head in float16: half the file, loaded back into float32 weights
        dtype=STORED_DTYPE if config.mode == "lora" else None,
        metadata={"format_version": str(FORMAT_VERSION)},
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "labels": list(EMOTIONS),
        "base_model": portable_name(base, default=DEFAULT_TEXT_MODEL),
        "lora": config.lora,
        "config": dataclasses.asdict(config),
    }
    write_atomic(directory / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())


def write_ensemble(directory: str | os.PathLike, members: Sequence[str]) -> Path:
    """directory's ENSEMBLE_FILE, naming its members' checkpoint folders (relative to directory); -> directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / ENSEMBLE_FILE, json.dumps({"members": list(members)}).encode())
    return directory


def member_folder(member: int) -> str:
    return f"member-{member}"


# --- training -----------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out: Path
    best_epoch: int  # 1-based; the checkpoint in out holds this epoch's weights
    history: list[dict]  # per epoch: train_loss and the validation scores
    train_seconds: float  # training and validation of every epoch, this call's and resumed ones'


class TextFit(Fit):
    """Length-bucketed batches; cross-entropy with the labels, mixed with a teacher's probabilities when distilling;
    the best validation weighted F1's checkpoint is written (by `save`) as soon as it is reached."""

    def __init__(self, train_set, labels, soft, validation, pad_id, config, save, **options):
        super().__init__(**options)
        self.train_set, self.labels, self.soft, self.pad_id, self.config = train_set, labels, soft, pad_id, config
        self.val_set, self.val_labels = validation
        self.save = save

    def batches(self, epoch: int):
        lengths = [len(e.input_ids) for e in self.train_set]
        for indices in training_batches(lengths, self.config.batch_size, self.generator):
            rows = collate([self.train_set[i] for i in indices], self.pad_id)
            yield indices, {k: v.to(self.device) for k, v in rows.items()}

    def loss(self, batch) -> torch.Tensor:
        indices, inputs = batch
        logits = self.model(inputs)
        smoothing = self.config.label_smoothing
        loss = nn.functional.cross_entropy(logits, self.labels[indices].to(self.device), label_smoothing=smoothing)
        if self.soft is not None:
            soft = nn.functional.cross_entropy(logits, self.soft[indices].to(self.device))
            loss = (1 - self.config.distill_weight) * loss + self.config.distill_weight * soft
        return loss

    def validate(self) -> dict:
        logits = predict_logits(self.model, self.val_set, self.pad_id, self.device, self.config.precision)
        scores = score(self.val_labels, [EMOTIONS[i] for i in logits.argmax(1)], EMOTIONS)
        return {k: getattr(scores, k) for k in ("weighted_f1", "macro_f1", "ua", "wa")}

    def on_best(self, epoch: int) -> None:
        self.save()

    def state_weights(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)

    def load_state_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights, strict=False)


def train_text_expert(
    examples: Sequence,
    out: str | os.PathLike,
    config: TextExpertConfig | None = None,
    *,
    text_model: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    cache: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train on labelled fusion.training.datasets Examples with text; the best epoch's checkpoint is written to out.

    The epoch is chosen by weighted F1 on a dialogue-disjoint validation part of examples (config.seed draws it);
    no other data is looked at. State is saved after every epoch; resume=True continues from it (when there is one).
    """
    from encoders.text import _load_bert

    config = config or TextExpertConfig()
    out = Path(out)
    device = pick_device(device)
    base = choose_model(text_model, env_var=TEXT_ENV, default=DEFAULT_TEXT_MODEL)
    torch.manual_seed(config.training_seed)
    tokenizer, bert = _load_bert(base)
    model = build_model(bert, config).to(device)

    items = items_from_examples(examples, context=config.context)
    train_idx, val_idx = split_by_dialogue(items, config.validation_fraction, config.seed)
    encoded = encode(tokenizer, items, config.max_tokens, cache=cache)
    soft = None
    if config.teacher is not None:  # soft targets, computed once: (N_train, len(EMOTIONS))
        teacher = load_expert(config.teacher, text_model=text_model, device=device)
        soft = torch.from_numpy(teacher.predict_items([items[i] for i in train_idx])).float()
        del teacher
    log(f"text expert ({config.mode}): {len(train_idx)} training, {len(val_idx)} validation utterances on {device}")
    optimiser = _optimiser(model, config)
    steps = config.epochs * math.ceil(len(train_idx) / config.batch_size)
    run = TextFit(
        [encoded[i] for i in train_idx],
        torch.tensor([items[i].label for i in train_idx]),
        soft,
        ([encoded[i] for i in val_idx], [EMOTIONS[items[i].label] for i in val_idx]),
        tokenizer.pad_token_id,
        config,
        lambda: save_checkpoint(model, config, base, out),
        model=model,
        optimizer=optimiser,
        schedule=warmup_linear(optimiser, total_steps=steps, warmup_fraction=config.warmup),
        device=device,
        generator=torch.Generator().manual_seed(config.training_seed),
        bf16=config.precision == "bf16",
        state_dir=out,
        settings=dataclasses.asdict(config),
        keep="weighted_f1",
    )
    resume = resume and (out / STATE_FILE).is_file()
    if resume:
        log(f"resuming from {out / STATE_FILE}")
    result = run.run(config.epochs, resume=resume)
    for record in result.history:
        log(
            f"epoch {record['epoch']}/{config.epochs}: loss {record['train_loss']:.4f}, validation weighted F1 "
            f"{record['weighted_f1']:.4f} UA {record['ua']:.4f}"
        )
    return TrainResult(out, result.best_epoch, result.history, result.seconds)


def train_text_ensemble(
    examples: Sequence, out: str | os.PathLike, config: TextExpertConfig, members: int, **kwargs
) -> list[TrainResult]:
    """`members` experts of config's recipe and seed (TextExpertConfig.member 0, 1, ...), each in its own folder
    of out, then out's ENSEMBLE_FILE. Each member resumes on its own (kwargs as train_text_expert's)."""
    out = Path(out)
    results = [
        train_text_expert(examples, out / member_folder(m), dataclasses.replace(config, member=m), **kwargs)
        for m in range(members)
    ]
    write_ensemble(out, [member_folder(m) for m in range(members)])
    return results


def _optimiser(model: TextExpertModel, config: TextExpertConfig) -> torch.optim.AdamW:
    """AdamW with the head at head_lr and the rest (adapters or encoder weights) at lr."""
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": config.head_lr}]
    if encoder:
        groups.append({"params": encoder, "lr": config.lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


# --- command line -------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TextExpertConfig()
    parser.add_argument("--data", action="append", required=True, help="KIND=PATH with transcripts, e.g. meld=CSV")
    parser.add_argument("--out", required=True, help="checkpoint folder (also holds the resumable state)")
    parser.add_argument("--resume", action="store_true", help="continue from the state saved in --out")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode)
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument(
        "--lr", type=positive_float, default=defaults.lr, help="adapters (full fine-tuning: about 5e-5)"
    )
    parser.add_argument("--head-lr", type=positive_float, default=defaults.head_lr)
    parser.add_argument("--lora-r", type=positive_int, default=defaults.lora_r)
    parser.add_argument("--lora-alpha", type=positive_int, default=defaults.lora_alpha)
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--max-tokens", type=positive_int, default=defaults.max_tokens)
    parser.add_argument("--context", action="store_true", help="read the previous utterance of the dialogue too")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision, help="autocast dtype")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--members",
        type=positive_int,
        default=1,
        help="train an ensemble of this many members, one folder each (default 1)",
    )
    parser.add_argument("--teacher", help="text expert or ensemble folder to distil from (soft targets)")
    parser.add_argument("--distill-weight", type=float, default=defaults.distill_weight)
    parser.add_argument("--text-model", help="base BERT model (default $FUSION_TEXT_MODEL, else all-MiniLM-L6-v2)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--cache", help="folder for the tokenised data")


def config_from_args(args: argparse.Namespace) -> TextExpertConfig:
    return TextExpertConfig(
        mode=args.mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        label_smoothing=args.label_smoothing,
        max_tokens=args.max_tokens,
        context=args.context,
        precision=args.precision,
        seed=args.seed,
        teacher=args.teacher,
        distill_weight=args.distill_weight,
    )


def run(args: argparse.Namespace) -> int:
    from fusion.training.datasets import from_specs

    manifest = from_specs(args.data)
    for skipped in manifest.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}")
    options = {"text_model": args.text_model, "device": args.device, "resume": args.resume, "cache": args.cache}
    config = config_from_args(args)
    if args.members > 1:
        results = train_text_ensemble(manifest.examples, args.out, config, args.members, **options)
    else:
        results = [train_text_expert(manifest.examples, args.out, config, **options)]
    for result in results:
        best = result.history[result.best_epoch - 1]
        print(
            f"{result.out}: epoch {result.best_epoch} kept, validation weighted F1 {best['weighted_f1']:.4f}, "
            f"UA {best['ua']:.4f}; {result.train_seconds / 60:.1f} min"
        )
    return 0
