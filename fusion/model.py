"""The fusion model: per-modality encoders and projections, time-windowed cross-attention, a classifier per segment.

Each modality's tokens attend to the other two modalities' tokens that lie within `attention_window_s` seconds
of them (MulT-style cross-modal attention, restricted in time). Tokens are then mean-pooled per segment and
modality, the present modalities are averaged, and a linear head gives one logit per emotion.

Absent modalities and padding are masked everywhere: a recording with no face, or no speech, is predicted
from what it has, and the values under a mask never reach the output.

The model also encodes a whole recording (or chunk of one) in memory that does not grow with its length
(:meth:`FusionModel.encode_audio_stream`, :meth:`FusionModel.encode_face_stream`), which prediction uses; training
encodes its padded batches of short examples in :meth:`FusionModel.forward`, with gradients, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from alignment import PaddedStreams, Stream, in_segments, near_in_time, pad_streams
from encoders.audio import TOKEN_SECONDS, TOKEN_STRIDE, SpectrogramCNN
from encoders.face import FaceCNN
from fusion.labels import EMOTIONS, MODALITIES

AUDIO_CHUNK_FRAMES = 3000  # spectrogram frames (30 s) per audio CNN input, so memory does not grow with duration
# Items per encoder pass of a whole recording, by device type. On the CPU small batches run no slower than large
# ones and keep the activations small (audio CNN: 0.02 GB at 1 chunk against 0.32 GB at 8; face CNN: 0.04 GB at
# 32 crops against 0.26 GB at 256; benchmarks/results/memory.md); a GPU wants large ones.
AUDIO_CHUNK_BATCH = {"cpu": 1, "cuda": 8}  # 30 s audio chunks per audio CNN pass
FACE_BATCH = {"cpu": 32, "cuda": 256}  # face crops per face CNN pass


@dataclass
class FusionConfig:
    labels: tuple[str, ...] = EMOTIONS
    dim: int = 128  # width of every token after projection
    heads: int = 4
    layers: int = 2
    ffn_mult: int = 2
    dropout: float = 0.1
    attention_window_s: float = 1.0  # seconds: how far in time a token looks into the other modalities
    audio_dim: int = 128  # spectrogram CNN output width
    text_dim: int = 384  # hidden size of the BERT model (all-MiniLM-L6-v2: 384)
    face_dim: int = 256  # face CNN output width

    @property
    def context_s(self) -> float:
        """Seconds around a segment whose tokens can influence it through the attention layers."""
        return self.attention_window_s * self.layers


@dataclass
class FusionBatch:
    """Encoder inputs for B examples, each predicted over one segment.

    audio: values (B, T_mel, N_MELS) log-mel frames, times per frame
    text: values (B, T_words, text_dim) word embeddings, times at each word's middle
    video: values (B, T_frames, 1, 48, 48) face pixels in [0, 1], mask False where no face was found
    segments: (B, 2) start, end seconds of the span each example's prediction describes
    """

    audio: PaddedStreams
    text: PaddedStreams
    video: PaddedStreams
    segments: torch.Tensor
    streams: dict[str, PaddedStreams] = field(init=False, repr=False)

    def __post_init__(self):
        self.streams = {"audio": self.audio, "text": self.text, "video": self.video}

    @classmethod
    def collate(cls, examples: Sequence[dict[str, Stream]], segments: Sequence[tuple[float, float]]) -> FusionBatch:
        """Pad the streams of B examples into one batch; example i is predicted over segments[i] (start, end)."""
        return cls(
            *(pad_streams([e[m] for e in examples]) for m in MODALITIES),
            segments=torch.tensor(segments, dtype=torch.float32).reshape(-1, 2),
        )

    def to(self, device: torch.device | str) -> FusionBatch:
        return FusionBatch(self.audio.to(device), self.text.to(device), self.video.to(device), self.segments.to(device))


class FusionModel(nn.Module):
    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = config
        self.audio_encoder = SpectrogramCNN(dim=config.audio_dim)
        self.face_encoder = FaceCNN(dim=config.face_dim)
        self.project = nn.ModuleDict(
            {
                "audio": nn.Linear(config.audio_dim, config.dim),
                "text": nn.Linear(config.text_dim, config.dim),
                "video": nn.Linear(config.face_dim, config.dim),
            }
        )
        self.modality_embedding = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(config.dim) * 0.02) for m in MODALITIES}
        )
        self.layers = nn.ModuleList([CrossModalLayer(config) for _ in range(config.layers)])
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, len(config.labels))

    def encode_audio(self, mel: PaddedStreams) -> PaddedStreams:
        """Log-mel frames (B, T_mel, N_MELS) -> audio tokens (B, T_mel / 4, audio_dim), one per 40 ms."""
        rows = mel.mask.any(1)  # the CNN runs only on examples that have audio (mixed-corpus batches)
        tokens = mel.values.new_zeros(len(rows), -(-mel.values.shape[1] // TOKEN_STRIDE), self.config.audio_dim)
        mask = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if rows.any():
            encoded, mask[rows] = self.audio_encoder(mel.values[rows], mel.mask[rows])
            tokens[rows] = encoded.to(tokens.dtype)  # bf16 under autocast
        start = mel.times[:, :1]  # time of each sequence's first frame
        offsets = (torch.arange(tokens.shape[1], device=tokens.device) + 0.5) * TOKEN_SECONDS
        return PaddedStreams(tokens, start + offsets, mask)

    def encode_faces(self, faces: PaddedStreams) -> PaddedStreams:
        """Face pixels (B, T, 1, 48, 48) -> embeddings (B, T, face_dim); the CNN runs on real faces only."""
        embeddings = faces.values.new_zeros(*faces.mask.shape, self.config.face_dim)
        if faces.mask.any():
            embeddings[faces.mask] = self.face_encoder(faces.values[faces.mask]).to(embeddings.dtype)
        return PaddedStreams(embeddings, faces.times, faces.mask)

    def encode_audio_stream(self, mel: Stream) -> Stream:
        """One recording's log-mel frames (T_mel, N_MELS) -> its audio tokens (T_mel / 4, audio_dim), float32 on the
        CPU, in memory that does not grow with its length: 30 s chunks, AUDIO_CHUNK_BATCH of them per pass."""
        device = self.head.weight.device
        batch = _batch_size(AUDIO_CHUNK_BATCH, device)
        chunk = AUDIO_CHUNK_FRAMES - AUDIO_CHUNK_FRAMES % TOKEN_STRIDE
        pieces = [mel[i : i + chunk] for i in range(0, len(mel), chunk)]
        values, times = [torch.zeros(0, self.config.audio_dim)], [torch.zeros(0)]
        for first in range(0, len(pieces), batch):
            encoded = self.encode_audio(pad_streams(pieces[first : first + batch]).to(device))
            keep = encoded.mask.cpu()
            values.append(encoded.values.float().cpu()[keep])
            times.append(encoded.times.cpu()[keep])
        values, times = torch.cat(values), torch.cat(times)
        return Stream(values, times, torch.ones(len(times), dtype=torch.bool))

    def encode_face_stream(self, faces: Stream) -> Stream:
        """One recording's face pixels (T, 1, 48, 48) -> embeddings (T, face_dim), float32 on the CPU and zero where
        no face was found; the CNN runs on real faces only, FACE_BATCH at a time."""
        device = self.head.weight.device
        embeddings = torch.zeros(len(faces), self.config.face_dim)
        real = torch.nonzero(faces.mask).flatten()
        batch = _batch_size(FACE_BATCH, device)
        for first in range(0, len(real), batch):
            rows = real[first : first + batch]
            embeddings[rows] = self.face_encoder(faces.values[rows].to(device)).float().cpu()
        return Stream(embeddings, faces.times, faces.mask)

    def forward(self, batch: FusionBatch) -> torch.Tensor:
        """Encoder inputs -> (B, n_labels) logits for each example's segment."""
        tokens = {
            "audio": self.encode_audio(batch.audio),
            "text": batch.text,
            "video": self.encode_faces(batch.video),
        }
        return self.fuse(tokens, batch.segments)

    def fuse(self, tokens: dict[str, PaddedStreams], segments: torch.Tensor) -> torch.Tensor:
        """Encoded tokens of each modality -> (B, n_labels) logits over each row's segment (B, 2)."""
        x = {m: self._project(m, tokens[m].values) for m in MODALITIES}
        for layer in self.layers:
            x = layer(x, tokens)

        pooled, present = [], []
        for m in MODALITIES:
            inside = in_segments(tokens[m].times, tokens[m].mask, segments)  # (B, T)
            weights = inside.to(x[m].dtype)
            pooled.append(torch.einsum("btd,bt->bd", x[m], weights) / weights.sum(1, keepdim=True).clamp(min=1))
            present.append(inside.any(1))
        pooled = torch.stack(pooled, 1)  # (B, 3, dim)
        present = torch.stack(present, 1).to(pooled.dtype)  # (B, 3)
        fused = torch.einsum("bmd,bm->bd", pooled, present) / present.sum(1, keepdim=True).clamp(min=1)
        return self.head(self.norm(fused))

    def _project(self, modality: str, values: torch.Tensor) -> torch.Tensor:
        """(B, T, d_modality) -> (B, T, dim); a batch without tokens may not have the feature size (T == 0)."""
        if values.shape[1] == 0:
            return values.new_zeros(*values.shape[:2], self.config.dim)
        return self.project[modality](values) + self.modality_embedding[modality]


def _batch_size(sizes: dict[str, int], device: torch.device) -> int:
    """The batch size for device from {device type: size}; any accelerator other than CUDA counts as CUDA."""
    return sizes[device.type] if device.type in sizes else sizes["cuda"]


def modalities_present(tokens: dict[str, PaddedStreams], segments: torch.Tensor) -> torch.Tensor:
    """(B, 3) bool: which modalities have a real token inside each row's segment, in MODALITIES order."""
    return torch.stack([in_segments(tokens[m].times, tokens[m].mask, segments).any(1) for m in MODALITIES], 1)


class CrossModalLayer(nn.Module):
    """Every modality attends to the other two within a time window, then a feed-forward block."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.window_s = config.attention_window_s
        self.attention = nn.ModuleDict({m: WindowedCrossAttention(config) for m in MODALITIES})
        self.query_norm = nn.ModuleDict({m: nn.LayerNorm(config.dim) for m in MODALITIES})
        self.key_norm = nn.ModuleDict({m: nn.LayerNorm(config.dim) for m in MODALITIES})
        self.ffn = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.LayerNorm(config.dim),
                    nn.Linear(config.dim, config.ffn_mult * config.dim),
                    nn.GELU(),
                    nn.Dropout(config.dropout),
                    nn.Linear(config.ffn_mult * config.dim, config.dim),
                )
                for m in MODALITIES
            }
        )

    def forward(self, x: dict[str, torch.Tensor], tokens: dict[str, PaddedStreams]) -> dict[str, torch.Tensor]:
        """x: {modality: (B, T_m, dim)}; tokens gives each modality's times and masks. All modalities update at once."""
        updated = {}
        for m in MODALITIES:
            others = [o for o in MODALITIES if o != m]
            context = torch.cat([self.key_norm[o](x[o]) for o in others], 1)  # (B, T_others, dim)
            key_times = torch.cat([tokens[o].times for o in others], 1)
            key_mask = torch.cat([tokens[o].mask for o in others], 1)
            allowed = near_in_time(tokens[m].times, key_times, key_mask, self.window_s)  # (B, T_m, T_others)
            h = x[m] + self.attention[m](self.query_norm[m](x[m]), context, allowed)
            updated[m] = h + self.ffn[m](h)
        return updated


class WindowedCrossAttention(nn.Module):
    """Multi-head attention from queries to the context tokens each query is allowed to see.

    A learned null key/value pair is always visible, so a query with no allowed token nearby (a silent stretch,
    a frame without face) gets a learned default instead of a softmax over nothing.
    """

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.to_q = nn.Linear(config.dim, config.dim)
        self.to_kv = nn.Linear(config.dim, 2 * config.dim)
        self.null_kv = nn.Parameter(torch.zeros(2, config.dim))
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (B, Tq, dim); context: (B, Tk, dim); allowed: (B, Tq, Tk) bool -> (B, Tq, dim)"""
        batch = x.shape[0]
        k, v = self.to_kv(context).chunk(2, dim=-1)
        null_k, null_v = repeat(self.null_kv.to(k.dtype), "two d -> two b 1 d", b=batch)
        k, v = torch.cat([null_k, k], 1), torch.cat([null_v, v], 1)
        allowed = F.pad(allowed, (1, 0), value=True)
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=self.heads) for t in (self.to_q(x), k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=rearrange(allowed, "b q k -> b 1 q k"), dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(rearrange(out, "b h t d -> b t (h d)"))
