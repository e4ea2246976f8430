"""The experts as one model: voice, text and face experts side by side, their probabilities fused late.

A bundle is a folder:

    experts.json    {"kind": "experts", "format_version": 1, "late_fusion": {...}, "face_views": "flip",
                     "face_precision": "bf16", ...}
    voice/          a voice expert checkpoint (fusion.experts.voice)
    text/           a text expert or ensemble checkpoint (fusion.experts.text); its base model is referenced by name
    face/           a face expert checkpoint (fusion.experts.face)

Any of the three folders may be missing; that modality is then never predicted. For each output segment of a
recording, each expert reads what the segment holds of its modality: the voice expert the log-mel frames and
Whisper states of the segment's audio (when voice activity detection finds speech there), the text expert the
segment's words, the face expert every sampled frame with a face (probabilities averaged over the frames).
:class:`fusion.experts.late_fusion.LateFusion` pools the experts present.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from alignment import Segment
from encoders.audio import FRAME_SECONDS, N_MELS
from encoders.memory import reusing_freed_blocks
from encoders.runtime import PRECISIONS, fold_batch_norms, pick_device
from encoders.vad import speech_at
from fusion.errors import CheckpointError
from fusion.experts import face as face_expert
from fusion.experts.attention import AttentionFusion
from fusion.experts.late_fusion import EPS, LateFusion
from fusion.experts.text import TextEnsemble, TextExpert, load_expert
from fusion.experts.voice import SpeakerStatistics, SpeechFeatures, VoiceExpert, to_canonical
from fusion.labels import EMOTIONS, MODALITIES
from fusion.storage import CONFIG_FILE

if TYPE_CHECKING:
    from fusion.media.features import RecordingFeatures

BUNDLE_FILE = "experts.json"
# experts.json's settings: what this version reads (late_fusion, learned_fusion, face_views, face_precision,
# voice_context_s), checks (kind, format_version, labels, experts: which experts the bundle has) or keeps for the
# record (calibration, recipe)
BUNDLE_KEYS = frozenset(
    {
        "kind",
        "format_version",
        "labels",
        "late_fusion",
        "learned_fusion",
        "face_views",
        "face_precision",
        "voice_context_s",
        "experts",
        "calibration",
        "recipe",
    }
)
FORMAT_VERSION = 1
LEARNED_FOLDER = "fusion"  # a bundle's learned fusion (fusion.experts.attention), when experts.json names one
FOLDERS = {"audio": "voice", "text": "text", "video": "face"}  # modality -> its expert's folder in a bundle
MIN_VOICE_S = 0.25  # seconds of speech (with the detector's hangover) a segment needs for the voice expert
# Segments per voice expert pass. With 8 segments of up to about 10 s (with their context), the largest activation
# (the CNN's first block) stays under encoders.memory.REUSE_THRESHOLD_BYTES, so batch after batch reuses the pages
# of the one before; 16 made about twice that, each a fresh mapping.
VOICE_BATCH = 8
# Seconds of the recording on each side of a segment that the voice expert reads with it, in bundles that fusion
# bundle makes: the voice was trained on whole recordings, and RAVDESS takes hold about 1 s of pause before their
# speech and 0.9 s after (medians by the voice activity detector, benchmarks/results/voice_skew/fold2). Read so,
# its label through fusion.predict matches its whole-recording benchmark. A bundle without the setting reads 0 s.
VOICE_CONTEXT_S = 1.0
MAX_VOICE_CONTEXT_S = 5.0  # a bundle's voice_context_s beyond this would blur neighbouring utterances together
# face_precision, the face expert's arithmetic on the CPU (PRECISIONS): bf16 autocast ran 466 against 314 FER2013
# faces/s (two views each, batches of 16, this 2-core CPU with AVX512-BF16), PublicTest accuracy 68.65 against 68.74
# with the shipped int8 face (benchmarks/results/default_model/bf16_inference.md). CUDA always runs in bf16.
# Faces per bf16 pass on the CPU. On the 10-minute input the experts took 4.6 s with 32 and 6.3 s with 16
# (benchmarks/results/default_model/speed_10min*.md); the bare face expert's faces/s favoured 32 in one run and
# 16 in another (bf16_inference.md), so the whole pipeline decides.
FACE_BATCH_BF16 = 32
# The face expert reads every FACE_FRAME_STRIDE-th face frame of a segment, from its first (2.5 a second at the
# default 5 fps; a segment with one face frame keeps it): frames 0.2 s apart show nearly the same face, and the
# expert was the largest cost of the bundle after Whisper (benchmarks/results/default_model/speed_10min.md). On the
# 12 shared clips, 24 of 25 segments keep their face label (benchmarks/results/default_model/bf16_inference.md).
FACE_FRAME_STRIDE = 2


@dataclass
class ExpertBundle:
    """Loaded experts (None where the bundle has none) and how their probabilities are fused."""

    voice: VoiceExpert | None
    text: TextExpert | TextEnsemble | None
    face: face_expert.FaceExpert | None
    late_fusion: LateFusion = field(default_factory=LateFusion)
    learned: AttentionFusion | None = None  # the cross-attention fusion over the experts' outputs, when it has one
    face_views: str = "flip"  # test-time views of the face expert (face_expert.VIEWS)
    face_precision: str = "fp32"  # the face expert's arithmetic on the CPU (PRECISIONS)
    voice_context_s: float = 0.0  # seconds each side of a segment the voice also reads (VOICE_CONTEXT_S)
    path: Path | None = None
    id: str = ""  # sha256 of experts.json and the experts' weight files, first 16 hex digits
    labels: tuple[str, ...] = EMOTIONS

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        text_model: str | os.PathLike | None = None,
        device=None,
        experts: Sequence[str] | None = None,
    ) -> ExpertBundle:
        """Read a bundle folder. experts: load only these (voice, text, face), as if it had no others (default:
        all). CheckpointError names what is missing or malformed; ModelNotFoundError (from the text expert) says
        how to point at its base model."""
        directory = Path(directory)
        config = read_bundle_config(directory)
        device = pick_device(device)
        voice = text = face = None
        wanted = set(FOLDERS.values()) if experts is None else set(experts)
        unknown = sorted(wanted - set(FOLDERS.values()))
        if unknown or not wanted:
            raise CheckpointError(f"no expert {unknown or '(none named)'}: a bundle's are {list(FOLDERS.values())}")
        if "voice" in wanted and (directory / FOLDERS["audio"]).is_dir():
            voice = fold_batch_norms(VoiceExpert.load(directory / FOLDERS["audio"], device=device))
            if len(voice.config.whisper_blocks) != 1:
                raise CheckpointError(f"{directory}: the voice expert must read the states of one Whisper block")
        if "text" in wanted and (directory / FOLDERS["text"]).is_dir():
            text = load_expert(directory / FOLDERS["text"], text_model=text_model, device=device)
        if "face" in wanted and (directory / FOLDERS["video"]).is_dir():
            face = fold_batch_norms(face_expert.FaceExpert.load(directory / FOLDERS["video"], device=device))
        if voice is None and text is None and face is None:
            raise CheckpointError(f"{directory}: no expert of {sorted(wanted)} in it (a bundle has voice, text, face)")
        try:
            late = LateFusion.from_dict(config["late_fusion"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(f"{directory / BUNDLE_FILE}: malformed late_fusion ({error})") from error
        views = config.get("face_views", "flip")
        if views not in face_expert.VIEWS:
            raise CheckpointError(f"{directory / BUNDLE_FILE}: face_views {views!r} is not one of {face_expert.VIEWS}")
        precision = config.get("face_precision", "fp32")
        if precision not in PRECISIONS:
            raise CheckpointError(f"{directory / BUNDLE_FILE}: face_precision {precision!r} is not one of {PRECISIONS}")
        context = config.get("voice_context_s", 0.0)
        if not isinstance(context, (int, float)) or not 0 <= context <= MAX_VOICE_CONTEXT_S:
            raise CheckpointError(
                f"{directory / BUNDLE_FILE}: voice_context_s {context!r} is not in 0..{MAX_VOICE_CONTEXT_S}"
            )
        learned = None
        if config.get("learned_fusion"):
            if not (directory / LEARNED_FOLDER).is_dir():
                raise CheckpointError(
                    f"{directory / BUNDLE_FILE} names a learned fusion, but {LEARNED_FOLDER}/ is missing"
                )
            learned = AttentionFusion.load(directory / LEARNED_FOLDER, late)
        return cls(
            voice, text, face, late, learned, views, precision, float(context), directory, bundle_digest(directory)
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the bundle has an expert for, in MODALITIES order."""
        experts = {"audio": self.voice, "text": self.text, "video": self.face}
        return tuple(m for m in MODALITIES if experts[m] is not None)

    @property
    def experts(self) -> tuple[str, ...]:
        """The names of the experts the bundle has (voice, text, face), in MODALITIES order."""
        return tuple(FOLDERS[m] for m in self.modalities)

    @property
    def whisper_block(self) -> int | None:
        """The Whisper encoder block whose states the voice expert reads (None without a voice expert)."""
        return None if self.voice is None else self.voice.config.whisper_blocks[0]

    @property
    def device(self) -> torch.device:
        for expert in (self.voice, self.face):
            if expert is not None:
                return next(expert.parameters()).device
        return self.text.words.device if hasattr(self.text, "words") else self.text.members[0].words.device

    def segment_probabilities(
        self,
        piece: RecordingFeatures,
        segments: Sequence[Segment],
        voice_statistics: list | SpeakerStatistics | None = None,
    ) -> dict[str, np.ndarray]:
        """{modality: (len(segments), len(EMOTIONS)) probabilities, NaN rows where the segment lacks it} for a
        fusion.media.features.RecordingFeatures piece (whisper_states computed when there is a voice expert).

        voice_statistics, for a voice expert with speaker normalisation: the recording's so far (a list holding one
        SpeakerStatistics, or empty at its start), which this piece's voiced segments are added to before they are
        standardised with them; or a SpeakerStatistics used as it is (the speaker's, gathered beforehand over
        several recordings: :meth:`voice_statistics`); None: this piece alone."""
        n = len(segments)
        out = {m: np.full((n, len(EMOTIONS)), np.nan, np.float32) for m in FOLDERS}
        if not n:
            return out
        if self.voice is not None and piece.mel is not None:
            self._voice(piece, segments, out["audio"], [] if voice_statistics is None else voice_statistics)
        if self.text is not None:
            rows = [i for i, s in enumerate(segments) if s.text.strip()]
            if rows:
                out["text"][rows] = self.text.predict_proba([segments[i].text.strip() for i in rows])
        if self.face is not None and piece.face_present is not None and piece.face_present.any():
            self._face(piece, segments, out["video"])
        return out

    def fuse(self, probabilities: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: (N, C) an expert's probabilities per segment, NaN rows where absent} -> (N, C) fused: by the
        learned fusion when the bundle has one, else by late fusion."""
        if self.learned is not None:
            return self.learned.fuse(probabilities)
        return self.late_fusion(probabilities)

    def summary_weights(self, probabilities: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: (N, C) an expert's probabilities per segment of one recording, NaN rows where absent} -> (N,)
        how much each segment counts in the recording's summary, a factor on its seconds (the late fusion's gates,
        one level up: LateFusion.summary_weights)."""
        return self.late_fusion.summary_weights(probabilities)

    def attribution(self, probabilities: dict[str, np.ndarray], fused: np.ndarray) -> dict[str, np.ndarray]:
        """{modality: (N,) how much it moved each row's fused answer}: the fused label's log-probability less its
        log-probability with that modality left out (NaN where the modality is absent). Positive: the modality
        argued for the label; negative: against it. A row's only modality is compared with no evidence at all (every
        class 1/C)."""
        rows = np.arange(len(fused))
        label = np.nan_to_num(fused).argmax(1)
        log_fused = np.log(np.clip(fused[rows, label], EPS, 1.0))
        out = {}
        for modality, p in probabilities.items():
            present = ~np.isnan(p).any(1)
            others = {m: q for m, q in probabilities.items() if m != modality}
            without = self.fuse(others) if others else np.full_like(fused, np.nan)
            without = np.where(np.isnan(without).any(1, keepdims=True), 1.0 / fused.shape[1], without)
            out[modality] = np.where(present, log_fused - np.log(np.clip(without[rows, label], EPS, 1.0)), np.nan)
        return out

    def voice_statistics(self, piece: RecordingFeatures, segments: Sequence[Segment]) -> SpeakerStatistics | None:
        """The speaker statistics of what the voice expert reads in this piece's segments (None: nothing voiced, or
        a voice expert without speaker normalisation); sums of them over a speaker's recordings can be handed to
        :meth:`segment_probabilities`."""
        if self.voice is None or piece.mel is None or not self.voice.config.speaker_normalisation:
            return None
        _, items = self._voice_items(piece, segments)
        return SpeakerStatistics.of([SpeechFeatures(m, s[None]) for m, s in items]) if items else None

    def _voice_items(self, piece: RecordingFeatures, segments: Sequence[Segment]) -> tuple[list[int], list]:
        """The rows of the segments the voice speaks for, and for each the (log-mel, states) it reads: the segment
        with voice_context_s of the recording on either side, where the detector hears at least MIN_VOICE_S."""
        if piece.whisper_states is None:
            raise ValueError("the voice expert needs Whisper states: extract features with whisper_blocks set")
        mel_times = piece.start + np.arange(len(piece.mel)) * FRAME_SECONDS
        # speech as the detector has it (its frames widened by HANGOVER_SECONDS), on the log-mel frames' times
        heard = (
            np.ones(len(mel_times), bool) if piece.speech is None else speech_at(mel_times, piece.speech, piece.start)
        )
        items, rows = [], []
        for i, s in enumerate(segments):
            inside = (mel_times >= s.start) & (mel_times < s.end)
            if np.count_nonzero(inside & heard) * FRAME_SECONDS < MIN_VOICE_S:
                continue  # the voice speaks where there is speech: a pause gets none
            start, end = s.start - self.voice_context_s, s.end + self.voice_context_s
            mel = piece.mel[(mel_times >= start) & (mel_times < end)]
            states = piece.whisper_states[(piece.whisper_times >= start) & (piece.whisper_times < end)]
            if len(mel) * FRAME_SECONDS >= MIN_VOICE_S and len(states):
                items.append((mel, states))
                rows.append(i)
        return rows, items

    def _voice(
        self,
        piece: RecordingFeatures,
        segments: Sequence[Segment],
        out: np.ndarray,
        statistics: list | SpeakerStatistics,
    ) -> None:
        rows, items = self._voice_items(piece, segments)
        if items and self.voice.config.speaker_normalisation:
            read = [SpeechFeatures(m, s[None]) for m, s in items]
            if not isinstance(statistics, SpeakerStatistics):
                # the recording's speaker statistics so far, this piece's voiced segments included (chunks stream by)
                statistics[:] = [
                    SpeakerStatistics.of(read) + statistics[0] if statistics else SpeakerStatistics.of(read)
                ]
                statistics = statistics[0]
            items = [(f.mel, f.states[0]) for f in (self.voice.normalise(r, statistics) for r in read)]
        device = self.device
        # batched by length, longest first, so that a batch pads little (the padding is masked: each segment's output
        # is the same) and its activations fit in the blocks the batch before freed (encoders.memory)
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        with reusing_freed_blocks():
            for first in range(0, len(order), VOICE_BATCH):
                chosen = order[first : first + VOICE_BATCH]
                batch = [items[i] for i in chosen]
                n_mel, n_states = max(len(m) for m, _ in batch), max(len(s) for _, s in batch)
                mel = torch.zeros(len(batch), n_mel, N_MELS)
                mel_mask = torch.zeros(len(batch), n_mel, dtype=torch.bool)
                states = torch.zeros(len(batch), 1, n_states, batch[0][1].shape[-1])
                states_mask = torch.zeros(len(batch), n_states, dtype=torch.bool)
                for b, (m, s) in enumerate(batch):
                    mel[b, : len(m)], mel_mask[b, : len(m)] = torch.from_numpy(m), True
                    states[b, 0, : len(s)], states_mask[b, : len(s)] = torch.from_numpy(s.astype(np.float32)), True
                with torch.inference_mode():
                    log_p = self.voice(*(t.to(device) for t in (mel, mel_mask, states, states_mask)))
                out[[rows[i] for i in chosen]] = to_canonical(log_p.float().exp().cpu().numpy())

    def face_probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 48, 48) uint8 grey faces -> (N, len(EMOTIONS)) the face expert's probabilities, as the bundle runs it."""
        bf16 = self.face_precision == "bf16"
        with reusing_freed_blocks():
            return face_expert.predict_proba(
                self.face,
                images,
                device=self.device,
                views=self.face_views,
                bf16=bf16,
                batch_size=FACE_BATCH_BF16 if bf16 and self.device.type == "cpu" else None,
            )

    def _face(self, piece: RecordingFeatures, segments: Sequence[Segment], out: np.ndarray) -> None:
        present = np.flatnonzero(piece.face_present)
        times = piece.face_times[present]
        inside = [np.flatnonzero((times >= s.start) & (times < s.end))[::FACE_FRAME_STRIDE] for s in segments]
        read = np.unique(np.concatenate(inside))
        frames = np.zeros((len(present), len(EMOTIONS)), np.float32)
        frames[read] = self.face_probabilities(piece.face_crops[present[read]])
        for i, rows in enumerate(inside):
            if len(rows):
                out[i] = frames[rows].mean(0)


def voice_whisper_block(directory: Path, experts: Sequence[str] | None = None) -> int | None:
    """The Whisper block whose states a bundle's voice expert reads, from its config alone, before any model loads
    (ExpertBundle.load checks the rest); None without a voice expert, or where experts leaves it out."""
    folder = directory / FOLDERS["audio"]
    if (experts is not None and "voice" not in experts) or not folder.is_dir():
        return None
    try:
        return int(json.loads((folder / CONFIG_FILE).read_text())["model"]["whisper_blocks"][0])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise CheckpointError(f"{folder}: not a readable voice expert ({error})") from error


def read_bundle_config(directory: Path) -> dict:
    path = directory / BUNDLE_FILE
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{directory}: not an experts bundle, {BUNDLE_FILE} is missing") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a JSON text file ({error})") from error
    if not isinstance(config, dict) or config.get("kind") != "experts":
        raise CheckpointError(
            f"{path}: not an experts bundle (kind {config.get('kind') if isinstance(config, dict) else None!r})"
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: bundle format {config.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    unknown = sorted(set(config) - BUNDLE_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: settings this version does not know: {unknown} (a newer fusion wrote it?)")
    if config.get("labels", list(EMOTIONS)) != list(EMOTIONS):
        raise CheckpointError(f"{path}: labels {config['labels']} are not this version's {list(EMOTIONS)}")
    named = config.get("experts", {})
    if not isinstance(named, dict) or set(named) - set(FOLDERS.values()):
        raise CheckpointError(f"{path}: 'experts' must map some of {list(FOLDERS.values())} to where they came from")
    missing = [name for name, source in named.items() if source and not (directory / name).is_dir()]
    if missing:
        raise CheckpointError(f"{path} names the {', '.join(missing)} expert(s), but {directory} has no such folder")
    return config


def is_bundle(directory: str | os.PathLike) -> bool:
    return (Path(directory) / BUNDLE_FILE).is_file()


def bundle_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors"):
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
