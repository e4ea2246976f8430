"""Cross-attention over the experts' outputs: the learned fusion, measured against late fusion.

Each expert's output becomes tokens: its evidence e_m = log q_m - log pi_m (calibrated log-probabilities over its class
prior, the terms that :class:`fusion.experts.late_fusion.LateFusion` sums), one token per voice segment, per
utterance and per face frame, each plus a learned embedding of its modality. A query attends to the tokens present
(absent modalities and padding masked), and a linear head turns what it read into a correction of the late-fusion
logits:

    logits = log late_fusion(p) + head(LayerNorm(attend(query, tokens)))

The head starts at zero, so the untrained model is late fusion exactly and training moves away from it only where
the data say so. Training drops each modality of an example with probability `modality_dropout` (one always kept),
so that any subset of modalities predicts (fusion.training.attention).

Data: no corpus in ../shared has the three modalities labelled together, so training examples are built by pairing
(fusion.training.attention.paired_examples): an example of class c takes one voice output of class c, one text
output of class c and one face output of class c, each from data its expert did not train on. Classes are drawn by
the prior that late fusion assumes when all three pool (:meth:`LateFusion.pooled_prior`), so that the two fusions
differ in how they combine the evidence, not in the class mix they expect (pairs of uniformly drawn classes taught
the model a uniform prior, which cost 8 points of accuracy on MELD dev, 47% neutral). Pairing makes the modalities
independent given the class, the assumption under which late fusion's product rule is already the Bayes decision; on
such data a learned fusion can at best match late fusion, and the comparison (benchmarks/attention_fusion.py)
measures what learning the fusion costs or gains, not cross-modal interactions, which need recordings labelled as a
whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from einops import repeat
from torch import nn

from fusion.errors import CheckpointError
from fusion.experts.late_fusion import EPS, LateFusion
from fusion.labels import EMOTIONS, MODALITIES
from fusion.storage import CONFIG_FILE, WEIGHTS_FILE, load_weights, save_weights, write_atomic


@dataclass(frozen=True)
class AttentionFusionConfig:
    dim: int = 32  # token width
    heads: int = 4


class AttentionFusion(nn.Module):
    """Late fusion plus a learned correction read by cross-attention from the experts' evidence tokens."""

    def __init__(self, config: AttentionFusionConfig, late: LateFusion, n_classes: int = len(EMOTIONS)):
        super().__init__()
        self.config, self.late = config, late
        self.embed = nn.Linear(n_classes, config.dim)
        self.modality = nn.Embedding(len(MODALITIES), config.dim)
        self.query = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02)
        self.attention = nn.MultiheadAttention(config.dim, config.heads, batch_first=True)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, evidence: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor, late_log_p: torch.Tensor
    ) -> torch.Tensor:
        """evidence (B, T, C) tokens, modality (B, T) indices into MODALITIES, mask (B, T) True where a token is
        real, late_log_p (B, C) log late-fusion probabilities -> (B, C) logits. Every row needs one real token."""
        tokens = self.embed(evidence) + self.modality(modality)
        query = repeat(self.query, "1 1 d -> b 1 d", b=len(tokens))
        read, _ = self.attention(query, tokens, tokens, key_padding_mask=~mask, need_weights=False)
        return late_log_p + self.head(self.norm(read[:, 0]))

    def fuse(self, probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
        """As LateFusion.__call__: {modality: (N, C), NaN rows where absent} -> (N, C) probabilities, NaN where no
        modality is present; each row is one example, one token per modality present (a segment's outputs)."""
        n = len(next(iter(probabilities.values())))
        examples, rows = [], []
        for i in range(n):
            example = {m: p[i : i + 1] for m, p in probabilities.items() if not np.isnan(p[i]).any()}
            if example:
                examples.append(example)
                rows.append(i)
        out = np.full((n, self.head.out_features), np.nan)
        if examples:
            out[rows] = predict_proba(self, examples)
        return out

    def save(self, directory: str | os.PathLike, *, extra: dict | None = None) -> Path:
        """model.safetensors (its weights) and config.json (its settings and `extra`); the late fusion it corrects
        is the bundle's, stored there."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory / WEIGHTS_FILE, self.state_dict())
        config = {"kind": "attention-fusion", "model": asdict(self.config)} | (extra or {})
        write_atomic(directory / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, late: LateFusion) -> AttentionFusion:
        directory = Path(directory)
        try:
            config = json.loads((directory / CONFIG_FILE).read_text())
            model = cls(AttentionFusionConfig(**config["model"]), late)
            model.load_state_dict(load_weights(directory / WEIGHTS_FILE))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{directory}: not a readable learned fusion ({error})") from error
        return model.eval()


def batch_tensors(
    late: LateFusion, examples: Sequence[Mapping[str, np.ndarray]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Examples ({modality: (n_tokens, C) probabilities}, modalities absent or with 0 rows missing) -> the model's
    inputs: evidence (B, T, C), modality (B, T), mask (B, T) and late-fusion log-probabilities (B, C). Late fusion
    sees each modality's probabilities averaged over its tokens, as the bundle averages a segment's face frames."""
    n_classes = len(EMOTIONS)
    lengths = [sum(len(p) for p in e.values()) for e in examples]
    if min(lengths) == 0:
        raise ValueError("every example needs at least one modality's probabilities")
    width = max(lengths)
    values = np.zeros((len(examples), width, n_classes), np.float32)
    kinds = np.zeros((len(examples), width), np.int64)
    mask = np.zeros((len(examples), width), bool)
    pooled = {m: np.full((len(examples), n_classes), np.nan, np.float32) for m in MODALITIES}
    for b, example in enumerate(examples):
        at = 0
        for modality, p in example.items():
            if not len(p):
                continue
            values[b, at : at + len(p)] = late.evidence(modality, p)
            kinds[b, at : at + len(p)] = MODALITIES.index(modality)
            mask[b, at : at + len(p)] = True
            pooled[modality][b] = p.mean(0)
            at += len(p)
    late_log_p = np.log(np.clip(late(pooled), EPS, 1.0))
    return (
        torch.from_numpy(values),
        torch.from_numpy(kinds),
        torch.from_numpy(mask),
        torch.from_numpy(late_log_p.astype(np.float32)),
    )


def late_fusion_proba(late: LateFusion, examples: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Examples as for batch_tensors -> (N, C) late fusion's probabilities of them (what the model corrects)."""
    return batch_tensors(late, examples)[3].exp().numpy()


@torch.inference_mode()
def predict_proba(model: AttentionFusion, examples: Sequence[Mapping[str, np.ndarray]], *, batch_size: int = 1024):
    """Examples as for batch_tensors -> (N, C) probabilities."""
    rows = []
    for first in range(0, len(examples), batch_size):
        rows.append(model(*batch_tensors(model.late, examples[first : first + batch_size])).softmax(-1))
    return torch.cat(rows).numpy()
