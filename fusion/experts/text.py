"""Text expert: fine-tune the BERT text encoder (LoRA adapters) with a 7-emotion head on transcripts such as MELD.

The expert reads an utterance the way the fusion model's text stream does: :class:`encoders.text.WordEncoder`'s
BERT model gives one vector per word (its word pieces mean-pooled), and the utterance is the mean of its words.
Training tunes that BERT model (``lora``: low-rank adapters through ``peft``; ``full``: every weight; ``frozen``:
none) together with a linear head, keeps the epoch with the best weighted F1 on a dialogue-disjoint validation part
of the training data, and saves its state every epoch so ``--resume`` continues an interrupted run.

A checkpoint folder holds ``model.safetensors`` (the head, and the adapters, or in ``full`` mode every encoder
weight; never pickle) and ``config.json``, which names the base model (never copied) and the adapters' settings.
:meth:`TextExpert.load` merges the adapters into the base model, so :attr:`TextExpert.words` is an ordinary
``WordEncoder`` (one tuned embedding per timed word, for the timeline) at the frozen encoder's speed.

    fusion train-expert text --data meld=../shared/data/meld-text/train_sent_emo.csv --out runs/text_expert
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encoders.loading import DEFAULT_TEXT_MODEL, TEXT_ENV, choose_model, portable_name
from encoders.runtime import pick_device
from fusion.errors import CheckpointError
from fusion.experts.state import load_training_state, load_weights, save_training_state, save_weights, write_atomic
from fusion.labels import EMOTIONS

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"  # resumable state (torch.save, read back with weights_only=True); not shipped
ENCODER_PREFIX = "encoder."  # model.safetensors keys under this prefix belong to the BERT model
MODES = ("lora", "full", "frozen")
PRECISIONS = ("bf16", "fp32")
EVAL_BATCH_SIZE = 64  # utterances per inference forward pass (length-sorted, so padding stays small)
# A LoRA checkpoint's weights are stored in this type (2.7 MB per member in float32, 1.35 MB in float16); the
# dev scores of the MELD benchmark's ensembles moved by under 0.1 point (benchmarks/results/meld_text_expert).
STORED_DTYPE = torch.float16
MEMBER_SEED_STEP = 1000  # seeds of an ensemble's members lie this far apart (see TextExpertConfig.member)
ENSEMBLE_FILE = "ensemble.json"  # an ensemble's folder: this file and one checkpoint folder per member
# Training batches are cut from runs of this many batches' worth of shuffled utterances, sorted by length inside
# the run: padding stays small while the batch order stays random.
BUCKET_BATCHES = 50


@dataclass
class TextExpertConfig:
    mode: str = "lora"  # one of MODES
    lora_r: int = 16  # adapter rank
    lora_alpha: int = 32  # adapter scale alpha / r = 2
    lora_dropout: float = 0.1
    # Module name suffixes in BERT's layers that get adapters: query/key/value and every "dense" (attention output,
    # intermediate, output) are all the linear layers of a BERT layer.
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")
    lora_norms: bool = False  # also train the layers' biases and LayerNorms (BitFit), stored beside the adapters
    epochs: int = 4  # with 6, validation weighted F1 peaked at epoch 3 and fell after (MELD, seed 0)
    batch_size: int = 32
    lr: float = 1e-3  # adapters (LoRA) or encoder weights (full: about 5e-5); unused when frozen
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of the steps with a linearly rising learning rate, then linear decay to 0
    label_smoothing: float = 0.0
    head_dropout: float = 0.1
    # Word pieces per sequence with [CLS] and [SEP]: MELD utterances have 14 on average, 30 at the 95th percentile.
    max_tokens: int = 64
    context: bool = False  # the previous utterance of the same dialogue goes first, as BERT's sentence A
    precision: str = "bf16"  # autocast for training and validation; one of PRECISIONS
    validation_fraction: float = 0.1  # of the dialogues, for choosing the epoch
    seed: int = 0  # initialisation, validation split, batch order, dropout
    # Ensemble member: members of one seed share its validation split, and member m > 0 draws its initialisation,
    # batch order and dropout from seed + MEMBER_SEED_STEP * m (member 0 is the single expert of that seed).
    member: int = 0
    # Knowledge distillation (Hinton et al., 2015): a text expert or ensemble folder whose probabilities on the
    # training utterances are soft targets; the loss is (1 - distill_weight) x cross-entropy with the labels plus
    # distill_weight x cross-entropy with the teacher's probabilities. None trains on the labels alone.
    teacher: str | None = None
    distill_weight: float = 0.5

    @property
    def training_seed(self) -> int:
        return self.seed + MEMBER_SEED_STEP * self.member

    def __post_init__(self):
        self.lora_targets = tuple(self.lora_targets)
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction}")

    @property
    def lora(self) -> dict | None:
        """The adapters' settings, as config.json records them; None without adapters."""
        if self.mode != "lora":
            return None
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout, "targets": self.lora_targets}


@dataclass(frozen=True)
class Item:
    """One utterance as the expert reads it."""

    words: tuple[str, ...]  # the utterance split on white space (as Whisper words come)
    context: tuple[str, ...] = ()  # the previous utterance's words, when context is used
    label: int = -1  # index into EMOTIONS; -1 when unknown
    dialogue: str = ""  # items of one dialogue stay on the same side of the validation split


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


# --- tokenisation -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """An item as BERT input: [CLS] (context [SEP]) words [SEP], and each token's weight in the utterance's mean."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]  # 1 for the utterance when a context precedes it, else 0
    weights: tuple[float, ...]  # 1 / (pieces of its word * words) on the utterance's pieces, 0 elsewhere


def encode(
    tokenizer, items: Sequence[Item], max_tokens: int, *, cache: str | os.PathLike | None = None
) -> list[Encoded]:
    """Items -> Encoded, with the pieces WordEncoder gives each word; cached in cache/ (a folder) when given.

    Each word is split into pieces on its own, as ``is_split_into_words`` does; a word with no pieces becomes
    [UNK] (as in WordEncoder). Words past max_tokens are dropped from the end of the utterance and from the start
    of the context (the most recent context words are kept).
    """
    path = None
    if cache is not None:
        rows = [[item.words, item.context] for item in items]
        key = json.dumps([FORMAT_VERSION, tokenizer.backend_tokenizer.to_str(), max_tokens, rows])
        path = Path(cache) / f"tokens-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
        if path.is_file():
            return [Encoded(*map(tuple, row)) for row in json.loads(path.read_text())]
    vocabulary = sorted({w for item in items for w in item.words + item.context})
    split = tokenizer(vocabulary, add_special_tokens=False)["input_ids"] if vocabulary else []
    pieces = {w: p or [tokenizer.unk_token_id] for w, p in zip(vocabulary, split)}
    special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id)
    encoded = [_encode_item(item, pieces, max_tokens, *special) for item in items]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps([dataclasses.astuple(e) for e in encoded]).encode())
    return encoded


def _encode_item(item: Item, pieces: dict[str, list[int]], max_tokens: int, cls: int, sep: int, unk: int) -> Encoded:
    budget = max_tokens - 2 - (1 if item.context else 0)  # [CLS] and [SEP]s
    words: list[list[int]] = []
    for word_pieces in [pieces[word] for word in item.words] or [[unk]]:  # no words: one [UNK]
        if words and sum(map(len, words)) + len(word_pieces) > budget:
            break
        words.append(word_pieces[:budget])  # only a first word longer than the budget is cut
    budget -= sum(map(len, words))
    context: list[int] = []
    for word in reversed(item.context):
        if len(context) + len(pieces[word]) > budget:
            break
        context[:0] = pieces[word]
    head = [cls, *context, sep] if item.context else [cls]
    body = [p for word in words for p in word] + [sep]
    weights = [1 / (len(word) * len(words)) for word in words for _ in word] + [0.0]
    return Encoded(
        input_ids=tuple(head + body),
        token_type_ids=(0,) * len(head) + (1 if item.context else 0,) * len(body),
        weights=(0.0,) * len(head) + tuple(weights),
    )


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """-> input_ids, token_type_ids, attention_mask (batch, tokens) long; weights (batch, tokens) float32."""
    length = max(len(e.input_ids) for e in batch)

    def pad(rows, value, dtype):
        return torch.tensor([list(r) + [value] * (length - len(r)) for r in rows], dtype=dtype)

    return {
        "input_ids": pad([e.input_ids for e in batch], pad_id, torch.long),
        "token_type_ids": pad([e.token_type_ids for e in batch], 0, torch.long),
        "attention_mask": pad([(1,) * len(e.input_ids) for e in batch], 0, torch.long),
        "weights": pad([e.weights for e in batch], 0.0, torch.float32),
    }


def training_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Indices in random batches of similar lengths (dynamic padding): shuffled, sorted within runs of batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    run = batch_size * BUCKET_BATCHES
    batches = []
    for first in range(0, len(order), run):
        sorted_run = sorted(order[first : first + run], key=lambda i: lengths[i])
        batches += [sorted_run[i : i + batch_size] for i in range(0, len(sorted_run), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


# --- model --------------------------------------------------------------------------------------------------------


class TextExpertModel(nn.Module):
    """BERT (with adapters, fully trainable, or frozen) -> mean over the utterance's words -> dropout -> linear."""

    def __init__(self, bert: nn.Module, dim: int, dropout: float):
        super().__init__()
        self.encoder = bert
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, len(EMOTIONS))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """collate()'s batch -> (batch, dim): the mean over words of each word's mean word piece."""
        inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        with contextlib.nullcontext() if trainable else torch.no_grad():
            hidden = self.encoder(**inputs).last_hidden_state  # (batch, tokens, dim)
        return torch.einsum("bt,btd->bd", batch["weights"], hidden.float())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (batch, len(EMOTIONS)) float32 logits."""
        return self.head(self.dropout(self.embed(batch))).float()


def add_lora(bert: nn.Module, lora: dict) -> nn.Module:
    """bert wrapped with fresh LoRA adapters (peft) on its layers' linear modules named by lora["targets"]."""
    from peft import LoraConfig, get_peft_model

    # Only the transformer layers: the pooler's "dense" is unused by mean pooling.
    pattern = rf".*encoder\.layer\.\d+\..*\.({'|'.join(lora['targets'])})"
    config = LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=pattern, bias="none"
    )
    return get_peft_model(bert, config)


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


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.inference_mode()
def predict_logits(
    model: TextExpertModel, encoded: Sequence[Encoded], pad_id: int, device: torch.device, precision: str
) -> torch.Tensor:
    """-> (len(encoded), len(EMOTIONS)) float32 logits on the CPU, in encoded's order (batches sorted by length)."""
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    logits = torch.zeros(len(encoded), len(EMOTIONS))
    for first in range(0, len(order), EVAL_BATCH_SIZE):
        chunk = order[first : first + EVAL_BATCH_SIZE]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in chunk], pad_id).items()}
        with _autocast(device, precision):
            logits[chunk] = model(batch).cpu()
    return logits


# --- checkpoint ---------------------------------------------------------------------------------------------------


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


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """-> (config.json's contents, model.safetensors' tensors); CheckpointError when either is missing or bad."""
    from safetensors import SafetensorError

    directory = Path(directory)
    for required in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / required).is_file():
            raise CheckpointError(f"{directory}: not a text expert checkpoint, {required} is missing")
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
        weights = load_weights(directory / WEIGHTS_FILE)
    except (json.JSONDecodeError, SafetensorError, OSError) as error:
        raise CheckpointError(f"{directory}: cannot read the text expert ({error})") from error
    if meta.get("format_version") != FORMAT_VERSION or meta.get("labels") != list(EMOTIONS):
        raise CheckpointError(f"{directory}: format {meta.get('format_version')!r} or labels differ from this code's")
    return meta, weights


class TextExpert:
    """A trained text expert: a tuned WordEncoder (one embedding per word) and the emotion head over its words."""

    def __init__(self, words, head: nn.Linear, config: TextExpertConfig, path: Path | None = None):
        self.words = words  # encoders.text.WordEncoder whose BERT model carries the tuned weights
        self.head = head.to(words.device).eval().requires_grad_(False)
        self.config = config
        self.path = path
        self.model = TextExpertModel(words.model, words.dim, config.head_dropout)
        self.model.head = self.head
        self.model.eval()

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        text_model: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ) -> TextExpert:
        """Load a checkpoint folder. The base model is text_model, else $FUSION_TEXT_MODEL, else the one it names.

        Raises ModelNotFoundError (how to point at a local copy) when the base model cannot be loaded, and
        CheckpointError when the folder is not a text expert.
        """
        from encoders.text import WordEncoder

        meta, weights = read_checkpoint(directory)
        config = TextExpertConfig(**meta["config"])
        words = WordEncoder(choose_model(text_model, env_var=TEXT_ENV, default=meta["base_model"]), device=device)
        encoder_weights = {
            k.removeprefix(ENCODER_PREFIX): v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)
        }
        bert = add_lora(words.model, meta["lora"]) if meta["lora"] else words.model
        missing = set(encoder_weights) - set(bert.state_dict())
        if missing:
            raise CheckpointError(f"{directory}: weights {sorted(missing)[:3]} do not fit the base model {words.name}")
        bert.load_state_dict(encoder_weights, strict=False)
        words.model = (bert.merge_and_unload() if meta["lora"] else bert).to(words.device).eval().requires_grad_(False)
        head = nn.Linear(words.dim, len(EMOTIONS))
        head.load_state_dict({"weight": weights["head.weight"], "bias": weights["head.bias"]})
        return cls(words, head, config, Path(directory))

    def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        """Utterance texts (and, for a context model, each one's previous utterance) -> (n, 7) probabilities."""
        if contexts is None or not self.config.context:
            contexts = [""] * len(texts)
        return self.predict_items([Item(tuple(t.split()), tuple(c.split())) for t, c in zip(texts, contexts)])

    def predict_items(self, items: Sequence[Item], *, precision: str = "fp32") -> np.ndarray:
        """-> (len(items), len(EMOTIONS)) float32 probabilities, columns in EMOTIONS order."""
        encoded = encode(self.words.tokenizer, items, self.config.max_tokens)
        logits = predict_logits(self.model, encoded, self.words.tokenizer.pad_token_id, self.words.device, precision)
        return logits.softmax(-1).numpy()

    @torch.inference_mode()
    def predict_utterances(self, utterances: Sequence) -> np.ndarray:
        """encoders.text Utterances -> (n, 7) probabilities, each from the mean of its WordEncoder word embeddings.

        The timeline's path: the same word vectors fusion reads; an utterance without words gets NaN.
        """
        vectors = self.words.encode(utterances)  # (n_words, dim)
        rows = torch.split(vectors, [len(u.words) for u in utterances])
        means = torch.stack([r.mean(0) for r in rows]) if rows else torch.zeros(0, self.words.dim)
        return self.head(means.to(self.words.device)).softmax(-1).cpu().numpy()


class TextEnsemble:
    """Text experts of one recipe whose members differ only in their training seed; probabilities are their mean.

    A folder holds ENSEMBLE_FILE (the member folders' names) and one checkpoint folder per member.
    """

    def __init__(self, members: Sequence[TextExpert], path: Path | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.path = path

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        text_model: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ) -> TextEnsemble:
        directory = Path(directory)
        try:
            names = json.loads((directory / ENSEMBLE_FILE).read_text())["members"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{directory}: not a text expert ensemble ({error})") from error
        return cls(
            [TextExpert.load(directory / name, text_model=text_model, device=device) for name in names], directory
        )

    def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        return np.mean([m.predict_proba(texts, contexts) for m in self.members], axis=0)

    def predict_items(self, items: Sequence[Item], *, precision: str = "fp32") -> np.ndarray:
        return np.mean([m.predict_items(items, precision=precision) for m in self.members], axis=0)

    def predict_utterances(self, utterances: Sequence) -> np.ndarray:
        return np.mean([m.predict_utterances(utterances) for m in self.members], axis=0)


def load_expert(
    directory: str | os.PathLike, *, text_model: str | os.PathLike | None = None, device=None
) -> TextExpert | TextEnsemble:
    """A text expert checkpoint folder, single or ensemble (see TextEnsemble), loaded."""
    load = TextEnsemble.load if (Path(directory) / ENSEMBLE_FILE).is_file() else TextExpert.load
    return load(directory, text_model=text_model, device=device)


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
    history: list[dict]  # per epoch: train_loss, seconds, utterances_per_s, validation scores
    train_seconds: float  # training and validation of every epoch, this call's and resumed ones'


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
    no other data is looked at. State is saved after every epoch; resume=True continues from it.
    """
    from encoders.text import _load_bert
    from fusion.training.metrics import score

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
    train_set, val_set = [encoded[i] for i in train_idx], [encoded[i] for i in val_idx]
    train_labels = torch.tensor([items[i].label for i in train_idx])
    if config.teacher is not None:  # soft targets, computed once: (N_train, len(EMOTIONS))
        teacher = load_expert(config.teacher, text_model=text_model, device=device)
        soft = torch.from_numpy(teacher.predict_items([items[i] for i in train_idx])).float()
        train_labels = (train_labels, soft)
        del teacher
    val_labels = [EMOTIONS[items[i].label] for i in val_idx]
    log(f"text expert ({config.mode}): {len(train_set)} training, {len(val_set)} validation utterances on {device}")

    optimiser, schedule = _optimiser(model, config, steps=config.epochs * math.ceil(len(train_set) / config.batch_size))
    generator = torch.Generator().manual_seed(config.training_seed)
    state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "history": [], "seconds": 0.0}
    if resume and (out / STATE_FILE).is_file():
        weights, state = load_training_state(
            out / STATE_FILE,
            optimizer=optimiser,
            schedule=schedule,
            generator=generator,
            settings=dataclasses.asdict(config),
        )
        model.load_state_dict(weights, strict=False)
        log(f"resumed after epoch {state['epoch']}")

    lengths = [len(e.input_ids) for e in train_set]
    for epoch in range(state["epoch"], config.epochs):
        started = time.perf_counter()
        batches = training_batches(lengths, config.batch_size, generator)
        loss = _train_epoch(
            model, train_set, train_labels, batches, optimiser, schedule, tokenizer.pad_token_id, device, config
        )
        trained = time.perf_counter() - started
        logits = predict_logits(model, val_set, tokenizer.pad_token_id, device, config.precision)
        scores = score(val_labels, [EMOTIONS[i] for i in logits.argmax(1)], EMOTIONS)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss,
            "train_seconds": trained,
            "train_utterances_per_s": len(train_set) / trained,
            "validation": {k: getattr(scores, k) for k in ("weighted_f1", "macro_f1", "ua", "wa")},
        }
        state["history"].append(record)
        state["seconds"] += time.perf_counter() - started
        if scores.weighted_f1 > state["best"]:
            state["best"], state["best_epoch"] = scores.weighted_f1, epoch + 1
            save_checkpoint(model, config, base, out)
        state["epoch"] = epoch + 1
        save_training_state(
            out / STATE_FILE,
            weights=trainable_state(model),
            optimizer=optimiser,
            schedule=schedule,
            generator=generator,
            settings=dataclasses.asdict(config),
            progress=state,
        )
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}, validation weighted F1 {scores.weighted_f1:.4f} "
            f"UA {scores.ua:.4f}, {record['train_utterances_per_s']:.0f} utterances/s"
        )
    return TrainResult(out, state["best_epoch"], state["history"], state["seconds"])


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


def _optimiser(model: TextExpertModel, config: TextExpertConfig, steps: int):
    """AdamW (the head at head_lr, the rest at lr) and a linear warm-up then linear decay to 0 over steps."""
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": config.head_lr}]
    if encoder:
        groups.append({"params": encoder, "lr": config.lr})
    optimiser = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    warmup = max(1, round(config.warmup * steps))

    def factor(step: int) -> float:
        return min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))

    return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def _train_epoch(model, train_set, labels, batches, optimiser, schedule, pad_id, device, config) -> float:
    """One pass over batches; -> the mean training loss. labels: (N,) class indices, or with config.teacher a pair
    of those and (N, len(EMOTIONS)) teacher probabilities."""
    model.train()
    total = 0.0
    for indices in batches:
        batch = {k: v.to(device) for k, v in collate([train_set[i] for i in indices], pad_id).items()}
        with _autocast(device, config.precision):
            logits = model(batch)
        hard = labels[0] if config.teacher is not None else labels
        loss = nn.functional.cross_entropy(logits, hard[indices].to(device), label_smoothing=config.label_smoothing)
        if config.teacher is not None:
            soft = nn.functional.cross_entropy(logits, labels[1][indices].to(device))
            loss = (1 - config.distill_weight) * loss + config.distill_weight * soft
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        total += loss.item() * len(indices)
    return total / sum(map(len, batches))


# --- command line -------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fusion.cli import positive_float, positive_int

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
        best = result.history[result.best_epoch - 1]["validation"]
        print(
            f"{result.out}: epoch {result.best_epoch} kept, validation weighted F1 {best['weighted_f1']:.4f}, "
            f"UA {best['ua']:.4f}; {result.train_seconds / 60:.1f} min"
        )
    return 0
