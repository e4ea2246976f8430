"""A BERT encoder for inference, as transformers' ``BertModel`` computes it, read from a Hugging Face folder.

Why not transformers' own: leaving its modelling code unimported took a cold `fusion predict` from 8.15 s to 6.97 s
on this CPU (benchmarks/results/cold_start). This module is the same arithmetic (absolute positions, post-layer-norm
blocks, exact GELU, the padding masked out of attention) over the same weights, named as transformers names them so
that a state dict moves between the two; tests/test_text.py checks it against transformers to 1e-4. Training still
uses transformers (fusion.training.text), where the import is paid once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        data = json.loads(path.read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # (batch, tokens, hidden)


class Bert(nn.Module):
    """BertModel's encoder without its pooler: input_ids, attention_mask, token_type_ids -> last_hidden_state."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if config.hidden_act != "gelu":
            raise ValueError(f"only BERT models with exact GELU are supported, not {config.hidden_act!r}")
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([_Layer(config) for _ in range(config.num_hidden_layers)])

    @classmethod
    def load(cls, folder: str | Path) -> Bert:
        """From a Hugging Face folder (config.json, model.safetensors); float32 whatever the file stores."""
        from safetensors.torch import load_file

        folder = Path(folder)
        model = cls(BertConfig.read(folder / "config.json"))
        weights = {k.removeprefix("bert."): v.float() for k, v in load_file(folder / "model.safetensors").items()}
        expected = set(model.state_dict())
        missing = expected - set(weights)
        if missing:
            raise KeyError(f"{folder}: weights missing for {sorted(missing)[:3]}")
        model.load_state_dict({k: weights[k] for k in expected})
        return model.eval()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> BertOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return BertOutput(x)


class _Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(positions)[None])


class _Layer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(config.hidden_size, config.hidden_size))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention.output.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        attention = self.attention.self

        def split(t):
            return t.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(attention.query(x)), split(attention.key(x)), split(attention.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = self.attention.output.LayerNorm(self.attention.output.dense(context) + x)
        hidden = nn.functional.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(hidden) + x)
