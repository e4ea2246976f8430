"""Text: a BERT model embeds each word of the transcript in its utterance.

:class:`WordEncoder` turns the :class:`encoders.asr.Utterance` s that speech recognition gives into one vector per
word, in the same order, so every word row has a time on the timeline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer

from encoders.asr import Utterance
from encoders.bert import Bert
from encoders.loading import (
    DEFAULT_TEXT_MODEL,
    TEXT_ENV,
    ModelNotFoundError,
    choose_model,
    looks_like_path,
    quiet_loading,
)
from encoders.runtime import pick_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BATCH_SIZE = 16  # sequences (utterances or chunks of them) per BERT forward pass


class WordEncoder:
    """A BERT model over the transcript: one embedding per word, its word pieces mean-pooled.

    The model is the argument, else $FUSION_TEXT_MODEL, else "sentence-transformers/all-MiniLM-L6-v2": a local
    Hugging Face folder, or a hub name that transformers downloads. It runs in float32, frozen.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | torch.device | None = None):
        self.name: str = choose_model(model, env_var=TEXT_ENV, default=DEFAULT_TEXT_MODEL)
        self.device = pick_device(device)
        self.tokenizer, self.model = _load_bert(self.name, inference=True)
        if not self.tokenizer.is_fast:
            raise ValueError(f"text model '{self.name}': pooling word pieces needs a fast tokenizer (word_ids)")
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim: int = self.model.config.hidden_size
        # Tokens per sequence, and word pieces once [CLS] and [SEP] are added.
        self.max_length: int = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        self.max_pieces: int = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)

    @torch.inference_mode()
    def encode(self, utterances: Sequence[Utterance]) -> torch.Tensor:
        """-> (n_words, dim) float32 on CPU, one row per word of all utterances in order; (0, dim) without words.

        Each utterance is its own sequence (split into chunks of whole words when it has more pieces than the model
        takes; padding is masked), so a word's embedding depends on its utterance, not on the others.
        """
        sequences = [
            chunk
            for utterance in utterances
            if utterance.words
            for chunk in self._chunks([word.text for word in utterance.words])
        ]
        rows = [torch.zeros(0, self.dim)]
        for first in range(0, len(sequences), BATCH_SIZE):
            batch = sequences[first : first + BATCH_SIZE]
            encoding = self.tokenizer(
                batch,
                is_split_into_words=True,
                padding=True,
                truncation=True,  # cuts only a single word longer than max_pieces: _chunks fits the rest
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**encoding.to(self.device)).last_hidden_state.cpu()  # (batch, pieces, dim)
            for i, words in enumerate(batch):
                word_ids = torch.tensor([-1 if w is None else w for w in encoding.word_ids(i)])
                is_piece = word_ids >= 0  # not [CLS], [SEP] or padding
                sums = torch.zeros(len(words), self.dim).index_add_(0, word_ids[is_piece], hidden[i][is_piece])
                counts = torch.bincount(word_ids[is_piece], minlength=len(words))
                rows.append(sums / counts[:, None])
        return torch.cat(rows)

    def _chunks(self, words: list[str]) -> list[list[str]]:
        """An utterance's words (at least one) -> runs of consecutive words of at most max_pieces word pieces each.

        A word the tokenizer turns into no pieces at all (empty, or only characters BERT's normaliser deletes,
        such as zero-width spaces or control characters) is replaced by the unknown token, so it still gets a
        row: the contextual embedding of [UNK] at its place in the utterance.
        """
        chunks: list[list[str]] = []
        used = self.max_pieces  # forces a new chunk for the first word
        for word, pieces in zip(words, self.tokenizer(words, add_special_tokens=False)["input_ids"]):
            if not pieces:
                word, pieces = self.tokenizer.unk_token, [self.tokenizer.unk_token_id]
            if used + len(pieces) > self.max_pieces:
                chunks.append([])
                used = 0
            chunks[-1].append(word)
            used += len(pieces)
        return chunks


def _load_bert(name: str, *, inference: bool = False) -> tuple[PreTrainedTokenizerBase, PreTrainedModel | Bert]:
    """The tokenizer and BERT model of a local folder or a hub name (float32 on every device: the shared weights are
    stored in float16). inference: the model as encoders.bert.Bert (no transformers modelling import), for
    prediction; else transformers' own, for training (peft wraps it)."""

    def not_found(reason: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            what="Text model", requested=name, env_var=TEXT_ENV, argument="text_model", reason=reason
        )

    source = name
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise not_found("no such directory" if not path.exists() else "not a directory")
        source = str(path)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source)
            if not inference:
                from transformers import AutoModel

                return tokenizer, AutoModel.from_pretrained(source, dtype=torch.float32)
            if not Path(source).is_dir():  # a hub name: its files, downloaded (or found in the cache)
                from huggingface_hub import snapshot_download

                source = snapshot_download(name, allow_patterns=["config.json", "model.safetensors"])
            return tokenizer, Bert.load(source)
    except OSError as err:  # offline or unknown hub name, or a folder without the model's files
        raise not_found(" ".join(str(err).split()).rstrip(".")) from err  # one line: the message adds its own stop
    except KeyError as err:  # a folder whose weights are not a BERT's
        raise not_found(f"not a BERT model ({err})") from err
