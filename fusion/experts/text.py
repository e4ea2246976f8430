"""Text expert: the BERT text encoder tuned with LoRA adapters and a 7-emotion head, reading transcripts.

The expert reads an utterance the way the timeline gives it: :class:`encoders.text.WordEncoder`'s BERT model gives
one vector per word (its word pieces mean-pooled), and the utterance is the mean of its words, then a linear head.

A checkpoint folder holds ``model.safetensors`` (the head, and the adapters, or in ``full`` mode every encoder
weight; never pickle) and ``config.json``, which names the base model (never copied) and the adapters' settings.
:meth:`TextExpert.load` merges the adapters into the base model, so :attr:`TextExpert.words` is an ordinary
``WordEncoder`` at the frozen encoder's speed. Training lives in :mod:`fusion.training.text`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encoders.loading import TEXT_ENV, choose_model
from encoders.runtime import PRECISIONS, autocast
from fusion.errors import CheckpointError
from fusion.labels import EMOTIONS
from fusion.storage import CONFIG_FILE, WEIGHTS_FILE, load_weights, write_atomic

FORMAT_VERSION = 1
ENCODER_PREFIX = "encoder."  # model.safetensors keys under this prefix belong to the BERT model
MODES = ("lora", "full", "frozen")
EVAL_BATCH_SIZE = 64  # utterances per inference forward pass (length-sorted, so padding stays small)
MEMBER_SEED_STEP = 1000  # seeds of an ensemble's members lie this far apart (see TextExpertConfig.member)
ENSEMBLE_FILE = "ensemble.json"  # an ensemble's folder: this file and one checkpoint folder per member


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


PEFT_PREFIX = "base_model.model."  # how peft names the wrapped model's weights in a LoRA checkpoint


def merge_weights(bert: nn.Module, weights: dict[str, torch.Tensor], lora: dict | None) -> None:
    """A checkpoint's encoder weights into bert, in place: each LoRA adapter merged into its linear layer (W += alpha
    / r * B A, as peft's merge_and_unload computes it, without loading peft), any other weight (the full mode's,
    lora_norms' biases and LayerNorms) copied. KeyError names a weight the base model has no place for."""
    modules = dict(bert.named_modules())
    plain = {}
    with torch.no_grad():
        for key, value in weights.items():
            name = key.removeprefix(PEFT_PREFIX)
            if ".lora_B." in name:
                continue
            if ".lora_A." in name:
                module = name.split(".lora_A.")[0]
                if module not in modules:
                    raise KeyError(key)
                up = weights[key.replace(".lora_A.", ".lora_B.")]
                layer = modules[module].weight
                layer += (lora["alpha"] / lora["r"]) * (up.to(layer.dtype) @ value.to(layer.dtype))
            elif not name.startswith("pooler."):  # mean pooling never reads BERT's pooler
                plain[name.replace(".base_layer.", ".")] = value
    missing = set(plain) - set(bert.state_dict())
    if missing:
        raise KeyError(sorted(missing)[0])
    bert.load_state_dict(plain, strict=False)


def add_lora(bert: nn.Module, lora: dict) -> nn.Module:
    """bert wrapped with fresh LoRA adapters (peft) on its layers' linear modules named by lora["targets"]."""
    from peft import LoraConfig, get_peft_model

    # Only the transformer layers: the pooler's "dense" is unused by mean pooling.
    pattern = rf".*encoder\.layer\.\d+\..*\.({'|'.join(lora['targets'])})"
    config = LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=pattern, bias="none"
    )
    return get_peft_model(bert, config)


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
        with autocast(device, cpu_bf16=precision == "bf16"):
            logits[chunk] = model(batch).cpu()
    return logits


# --- checkpoint ---------------------------------------------------------------------------------------------------


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """-> (config.json's contents, model.safetensors' tensors); CheckpointError when either is missing or bad."""
    directory = Path(directory)
    for required in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / required).is_file():
            raise CheckpointError(f"{directory}: not a text expert checkpoint, {required} is missing")
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
        weights = load_weights(directory / WEIGHTS_FILE)
    except (json.JSONDecodeError, OSError) as error:
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
        base=None,
    ) -> TextExpert:
        """Load a checkpoint folder. The base model is text_model, else $FUSION_TEXT_MODEL, else the one it names.
        base: a loaded encoders.text.WordEncoder of that model to copy instead of loading it again (an ensemble's).

        Raises ModelNotFoundError (how to point at a local copy) when the base model cannot be loaded, and
        CheckpointError when the folder is not a text expert.
        """
        from encoders.text import WordEncoder

        meta, weights = read_checkpoint(directory)
        config = TextExpertConfig(**meta["config"])
        name = choose_model(text_model, env_var=TEXT_ENV, default=meta["base_model"])
        if base is None or base.name != name:
            words = WordEncoder(name, device=device)
        else:  # an ensemble's members share the base model's loading; each tunes a copy
            words = copy.copy(base)
            words.model = copy.deepcopy(base.model)
        encoder_weights = {
            k.removeprefix(ENCODER_PREFIX): v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)
        }
        try:
            merge_weights(words.model, encoder_weights, meta["lora"])
        except KeyError as error:
            raise CheckpointError(f"{directory}: weights {error} do not fit the base model {words.name}") from None
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
        from encoders.text import WordEncoder

        meta, _ = read_checkpoint(directory / names[0]) if names else ({}, None)
        base = WordEncoder(choose_model(text_model, env_var=TEXT_ENV, default=meta.get("base_model")), device=device)
        members = [TextExpert.load(directory / name, text_model=text_model, device=device, base=base) for name in names]
        return cls(members, directory)

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
