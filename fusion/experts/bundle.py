"""The experts as one model: voice, text and face experts side by side, their probabilities fused late.

A bundle is a folder:

    experts.json    {"kind": "experts", "format_version": 1, "late_fusion": {...}, "face_views": "flip",
                     "face_precision": "bf16", ...}
    voice/          a voice expert checkpoint (fusion.experts.audio)
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
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignment import Segment
from encoders.audio import FRAME_SECONDS, N_MELS
from encoders.runtime import pick_device
from encoders.vad import speech_within
from fusion.errors import CheckpointError
from fusion.experts import face as face_expert
from fusion.experts.audio import VoiceExpert, to_canonical
from fusion.experts.late_fusion import LateFusion
from fusion.experts.state import STORED_DTYPES, write_atomic
from fusion.experts.text import load_expert
from fusion.labels import EMOTIONS, MODALITIES, label_indices

BUNDLE_FILE = "experts.json"
FORMAT_VERSION = 1
FOLDERS = {"audio": "voice", "text": "text", "video": "face"}  # modality -> its expert's folder in a bundle
MIN_VOICE_S = 0.25  # seconds of audio a segment needs for the voice expert (its CNN pools 40 ms tokens)
VOICE_BATCH = 16  # segments per voice expert pass
# The face expert's arithmetic on the CPU. bf16 autocast: 466 against 314 FER2013 faces/s (two views each, batches
# of 16, this 2-core CPU with AVX512-BF16), PublicTest accuracy 68.65 against 68.74 with the shipped int8 face
# (benchmarks/results/default_model/bf16_inference.md). CUDA always runs in bf16 (encoders.runtime.autocast).
PRECISIONS = ("fp32", "bf16")
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
    text: object | None  # fusion.experts.text.TextExpert or TextEnsemble
    face: face_expert.FaceExpert | None
    late_fusion: LateFusion = field(default_factory=LateFusion)
    face_views: str = "flip"  # test-time views of the face expert (face_expert.VIEWS)
    face_precision: str = "fp32"  # the face expert's arithmetic on the CPU (PRECISIONS)
    path: Path | None = None
    id: str = ""  # sha256 of experts.json and the experts' weight files, first 16 hex digits
    labels: tuple[str, ...] = EMOTIONS

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, text_model: str | os.PathLike | None = None, device=None
    ) -> ExpertBundle:
        """Read a bundle folder. CheckpointError names what is missing or malformed; ModelNotFoundError (from the
        text expert) says how to point at its base model."""
        directory = Path(directory)
        config = read_bundle_config(directory)
        device = pick_device(device)
        voice = text = face = None
        if (directory / FOLDERS["audio"]).is_dir():
            voice = VoiceExpert.load(directory / FOLDERS["audio"], device=device)
            if len(voice.config.whisper_blocks) != 1:
                raise CheckpointError(f"{directory}: the voice expert must read the states of one Whisper block")
        if (directory / FOLDERS["text"]).is_dir():
            text = load_expert(directory / FOLDERS["text"], text_model=text_model, device=device)
        if (directory / FOLDERS["video"]).is_dir():
            face = face_expert.FaceExpert.load(directory / FOLDERS["video"], device=device)
        if voice is None and text is None and face is None:
            raise CheckpointError(f"{directory}: a bundle needs at least one of {sorted(FOLDERS.values())}")
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
        return cls(voice, text, face, late, views, precision, directory, bundle_digest(directory))

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the bundle has an expert for, in MODALITIES order."""
        experts = {"audio": self.voice, "text": self.text, "video": self.face}
        return tuple(m for m in MODALITIES if experts[m] is not None)

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

    def segment_probabilities(self, piece, segments: Sequence[Segment]) -> dict[str, np.ndarray]:
        """{modality: (len(segments), len(EMOTIONS)) probabilities, NaN rows where the segment lacks it} for a
        fusion.media.features.RecordingFeatures piece (whisper_states computed when there is a voice expert)."""
        n = len(segments)
        out = {m: np.full((n, len(EMOTIONS)), np.nan, np.float32) for m in FOLDERS}
        if not n:
            return out
        if self.voice is not None and piece.mel is not None:
            self._voice(piece, segments, out["audio"])
        if self.text is not None:
            rows = [i for i, s in enumerate(segments) if s.text.strip()]
            if rows:
                out["text"][rows] = self.text.predict_proba([segments[i].text.strip() for i in rows])
        if self.face is not None and piece.face_present is not None and piece.face_present.any():
            self._face(piece, segments, out["video"])
        return out

    def fuse(self, probabilities: dict[str, np.ndarray]) -> np.ndarray:
        return self.late_fusion(probabilities)

    def _voice(self, piece, segments: Sequence[Segment], out: np.ndarray) -> None:
        if piece.whisper_states is None:
            raise ValueError("the voice expert needs Whisper states: extract features with whisper_blocks set")
        mel_times = piece.start + np.arange(len(piece.mel)) * FRAME_SECONDS
        items, rows = [], []
        for i, s in enumerate(segments):
            if piece.speech is not None and not speech_within(s.start, s.end, piece.speech, piece.start):
                continue
            mel = piece.mel[(mel_times >= s.start) & (mel_times < s.end)]
            states = piece.whisper_states[(piece.whisper_times >= s.start) & (piece.whisper_times < s.end)]
            if len(mel) * FRAME_SECONDS >= MIN_VOICE_S and len(states):
                items.append((mel, states))
                rows.append(i)
        device = self.device
        for first in range(0, len(items), VOICE_BATCH):
            batch = items[first : first + VOICE_BATCH]
            n_mel, n_states = max(len(m) for m, _ in batch), max(len(s) for _, s in batch)
            mel = torch.zeros(len(batch), n_mel, N_MELS)
            mel_mask = torch.zeros(len(batch), n_mel, dtype=torch.bool)
            states = torch.zeros(len(batch), 1, n_states, batch[0][1].shape[-1])
            states_mask = torch.zeros(len(batch), n_states, dtype=torch.bool)
            for b, (m, s) in enumerate(batch):
                mel[b, : len(m)], mel_mask[b, : len(m)] = torch.from_numpy(m), True
                states[b, 0, : len(s)], states_mask[b, : len(s)] = torch.from_numpy(s), True
            with torch.inference_mode():
                log_p = self.voice(*(t.to(device) for t in (mel, mel_mask, states, states_mask)))
            out[rows[first : first + len(batch)]] = to_canonical(log_p.float().exp().cpu().numpy())

    def face_probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 48, 48) uint8 grey faces -> (N, len(EMOTIONS)) the face expert's probabilities, as the bundle runs it."""
        bf16 = self.face_precision == "bf16"
        return face_expert.predict_proba(
            self.face,
            images,
            device=self.device,
            views=self.face_views,
            bf16=bf16,
            batch_size=FACE_BATCH_BF16 if bf16 and self.device.type == "cpu" else None,
        )

    def _face(self, piece, segments: Sequence[Segment], out: np.ndarray) -> None:
        present = np.flatnonzero(piece.face_present)
        times = piece.face_times[present]
        inside = [np.flatnonzero((times >= s.start) & (times < s.end))[::FACE_FRAME_STRIDE] for s in segments]
        read = np.unique(np.concatenate(inside))
        frames = np.zeros((len(present), len(EMOTIONS)), np.float32)
        frames[read] = self.face_probabilities(piece.face_crops[present[read]])
        for i, rows in enumerate(inside):
            if len(rows):
                out[i] = frames[rows].mean(0)


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
    return config


def is_bundle(directory: str | os.PathLike) -> bool:
    return (Path(directory) / BUNDLE_FILE).is_file()


def assemble(
    directory: str | os.PathLike,
    *,
    voice: str | os.PathLike | None = None,
    text: str | os.PathLike | None = None,
    face: str | os.PathLike | None = None,
    late_fusion: LateFusion | None = None,
    face_views: str = "flip",
    face_precision: str = "fp32",
    extra: dict | None = None,
) -> Path:
    """Write a bundle folder from expert checkpoint folders (copied in; only weights and configs, no training state)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for modality, source in (("audio", voice), ("text", text), ("video", face)):
        target = directory / FOLDERS[modality]
        if source is not None and Path(source).resolve() == target.resolve():
            continue  # the expert is in place already (rebuilding a bundle from its own experts)
        if target.exists():
            shutil.rmtree(target)
        if source is not None:
            shutil.copytree(source, target, ignore=_not_shipped)
    config = {
        "kind": "experts",
        "format_version": FORMAT_VERSION,
        "labels": list(EMOTIONS),
        "late_fusion": (late_fusion or LateFusion()).to_dict(),
        "face_views": face_views,
        "face_precision": face_precision,
    } | (extra or {})
    write_atomic(directory / BUNDLE_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return directory


def build(
    out: str | os.PathLike,
    *,
    voice: str | os.PathLike | None = None,
    text: Sequence[str | os.PathLike] = (),
    face: str | os.PathLike | None = None,
    face_examples: Sequence = (),
    text_examples: Sequence = (),
    voice_examples: Sequence = (),
    face_views: str = "flip",
    face_precision: str = "bf16",
    face_dtype: str | None = None,
    recipe: dict | None = None,
    voice_temperature: float = 1.0,
    scratch: str | os.PathLike | None = None,
) -> dict:
    """Calibrate expert checkpoints and write them as one bundle to out; -> what was fitted, for the record.

    Each expert's temperature is fitted on its own validation data, recomputed from its training data as its
    training drew it: face_examples (fusion.training.datasets Examples of the face expert's training images; its
    stratified held-out share), text_examples (the text expert's training utterances; its dialogue-disjoint held-out
    share).
    The voice expert's recipe holds no speakers out, so its temperature is given (voice_temperature: fitted on the
    recipe's out-of-fold outputs, benchmarks/voice_calibration.py), else 1. Each expert's prior is the mean of
    its calibrated probabilities on that validation data; the voice expert's is the class mix its training sampler
    drew from voice_examples (its training recordings: each corpus an equal share, classes balanced within), uniform
    without them. Several text folders become an ensemble (written to scratch first). Weights are 1.
    face_dtype: store the face expert's weights so (a name in experts.state.STORED_DTYPES; "int8": 3.6 MB,
    PublicTest 68.7 against 69.0 in float32) instead of copying them as they are. recipe: the recipe that made the
    experts (fusion.experts.recipe), recorded in experts.json so that `fusion bundle --recipe` on the bundle
    retrains it.
    """
    from fusion.experts.late_fusion import fit_temperature
    from fusion.experts.text import items_from_examples, split_by_dialogue

    temperatures, priors, record = {}, {}, {}
    names = {"voice": _name(voice), "text": [_name(t) for t in text], "face": _name(face)}  # as given, for the record
    if face is not None and face_dtype is not None:
        face = _stored_as(face, face_dtype, Path(scratch or out) / ".face")
    if face is not None:
        model = face_expert.FaceExpert.load(face)
        training = json.loads((Path(face) / face_expert.CONFIG_FILE).read_text())["training"]
        labels = [e.label for e in face_examples]
        _, held = face_expert.stratified_split(
            labels, fraction=training["validation_fraction"], seed=training["config"]["seed"]
        )
        if not held:
            raise ValueError("the face expert's validation images: pass its training images as face_examples")
        images = face_expert.read_faces([face_examples[i].path for i in held])
        probabilities = ExpertBundle(None, None, model, face_views=face_views, face_precision=face_precision)
        probabilities = probabilities.face_probabilities(images)
        temperatures["video"] = fit_temperature(probabilities, label_indices([labels[i] for i in held]))
        priors["video"] = _mean_calibrated(probabilities, temperatures["video"])
        record["video"] = {
            "validation_images": len(held),
            "views": face_views,
            "precision": face_precision,
            "temperature": temperatures["video"],
        }
    text_folder = None
    if text:
        text_folder = Path(text[0]) if len(text) == 1 else _ensemble_folder(text, Path(scratch or out) / ".ensemble")
        model = load_expert(text_folder)
        config = (model.members[0] if hasattr(model, "members") else model).config
        items = items_from_examples(text_examples, context=config.context)
        _, held = split_by_dialogue(items, config.validation_fraction, config.seed)
        if not held:
            raise ValueError("the text expert's validation utterances: pass its training utterances as text_examples")
        probabilities = model.predict_items([items[i] for i in held])
        temperatures["text"] = fit_temperature(probabilities, label_indices([text_examples[i].label for i in held]))
        priors["text"] = _mean_calibrated(probabilities, temperatures["text"])
        record["text"] = {"validation_utterances": len(held), "temperature": temperatures["text"]}
    if voice is not None:
        temperatures["audio"] = voice_temperature
        record["audio"] = {
            "temperature": voice_temperature,
            "why": "given: its recipe trains on every speaker (benchmarks/voice_calibration.py fits it out of fold)",
        }
        if voice_examples:
            priors["audio"] = _sampler_prior(voice_examples)
            record["audio"]["prior_from"] = f"the training sampler over {len(voice_examples)} recordings"
    assemble(
        out,
        voice=voice,
        text=text_folder,
        face=face,
        late_fusion=LateFusion(temperatures, {m: 1.0 for m in FOLDERS}, priors),
        face_views=face_views,
        face_precision=face_precision,
        extra={
            "experts": names,
            "calibration": record,
        }
        | ({"recipe": recipe} if recipe is not None else {}),
    )
    if text_folder is not None and len(text) > 1:
        shutil.rmtree(text_folder)
    if face_dtype is not None and face is not None:
        shutil.rmtree(face)
    return record


def _stored_as(face: str | os.PathLike, dtype: str, scratch: Path) -> Path:
    """The face expert re-saved with dtype weights in scratch (its config.json kept), as the bundle will ship it."""
    if dtype not in STORED_DTYPES:
        raise ValueError(f"face_dtype must be one of {sorted(STORED_DTYPES)}, got {dtype!r}")
    config = json.loads((Path(face) / face_expert.CONFIG_FILE).read_text())
    extra = {k: v for k, v in config.items() if k != "model"} | {"dtype": dtype}
    if scratch.exists():
        shutil.rmtree(scratch)
    return face_expert.FaceExpert.load(face).save(scratch, extra=extra, dtype=STORED_DTYPES[dtype])


def _mean_calibrated(probabilities: np.ndarray, temperature: float) -> list[float]:
    from fusion.experts.late_fusion import calibrated_log_probabilities

    return np.exp(calibrated_log_probabilities(probabilities, temperature)).mean(0).tolist()


def _sampler_prior(examples: Sequence) -> list[float]:
    """The canonical class mix that the voice expert's sampler draws (fusion.training.train.balanced_weights by
    corpus)."""
    from fusion.experts.audio import VOICE_LABELS, voice_label
    from fusion.training.train import balanced_weights

    labels = [voice_label(e.dataset, e.label, e.native_label) for e in examples]
    weights = balanced_weights(labels, [e.dataset for e in examples]).numpy()
    mix = np.array([[weights[[x == label for x in labels]].sum() for label in VOICE_LABELS]]) / weights.sum()
    return to_canonical(mix)[0].tolist()


def _name(path) -> str | None:
    return None if path is None else os.fspath(path)


def _ensemble_folder(folders: Sequence[str | os.PathLike], scratch: Path) -> Path:
    """Text expert folders as one ensemble folder (fusion.experts.text.TextEnsemble) in scratch."""
    from fusion.experts.text import CONFIG_FILE, WEIGHTS_FILE, member_folder, write_ensemble

    if scratch.exists():
        shutil.rmtree(scratch)
    names = []
    for m, folder in enumerate(folders):
        name = member_folder(m)
        (scratch / name).mkdir(parents=True)
        for file in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copy(Path(folder) / file, scratch / name / file)
        names.append(name)
    return write_ensemble(scratch, names)


# ---------------------------------------------------------------------------------------------------- command line


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument(
        "--recipe",
        help="train the experts first, by this recipe (a JSON file or a bundle folder / experts.json that records "
        "one; fusion/experts/recipe.py); experts given by path are reused",
    )
    parser.add_argument("--work", help="with --recipe: folder for the stages' checkpoints and states (resumable)")
    parser.add_argument("--shared", help="with --recipe: the shared data folder (default $FUSION_SHARED, ../shared)")
    parser.add_argument("--voice", help="voice expert folder (fusion train-expert audio)")
    parser.add_argument("--text", nargs="+", default=[], help="text expert folders; several make an ensemble")
    parser.add_argument("--face", help="face expert folder (fusion train-expert face)")
    parser.add_argument("--face-data", help="the face expert's training images, KIND=PATH (for its validation share)")
    parser.add_argument("--text-data", help="the text expert's training transcripts, KIND=PATH")
    parser.add_argument(
        "--voice-data", action="append", default=[], help="the voice expert's training recordings, KIND=PATH (prior)"
    )
    parser.add_argument("--face-views", choices=face_expert.VIEWS, default="flip", help="test-time views of faces")
    parser.add_argument(
        "--face-precision", choices=PRECISIONS, default="bf16", help="the face expert's arithmetic on the CPU"
    )
    parser.add_argument(
        "--face-dtype", choices=sorted(STORED_DTYPES), help="store the face weights so (default: as they are)"
    )
    parser.add_argument(
        "--voice-temperature",
        type=float,
        default=1.0,
        help="the voice expert's temperature (its recipe holds no speech out; benchmarks/voice_calibration.py)",
    )


def run(args) -> int:
    from fusion.training.datasets import from_spec

    recipe = None
    if args.recipe:
        recipe = _run_recipe(args)
    if not (args.voice or args.text or args.face):
        raise SystemExit("fusion bundle: give at least one of --voice, --text, --face")
    if args.face and not args.face_data or args.text and not args.text_data:
        raise SystemExit("fusion bundle: --face needs --face-data and --text needs --text-data (for calibration)")
    record = build(
        args.out,
        voice=args.voice,
        text=args.text,
        face=args.face,
        face_examples=[e for e in from_spec(args.face_data).examples if e.modalities == ("video",)]
        if args.face
        else (),
        text_examples=from_spec(args.text_data).examples if args.text else (),
        voice_examples=[e for spec in args.voice_data for e in from_spec(spec).examples if "audio" in e.modalities],
        face_views=args.face_views,
        face_precision=args.face_precision,
        face_dtype=args.face_dtype,
        recipe=recipe,
        voice_temperature=args.voice_temperature,
    )
    print(json.dumps(record, indent=2))
    print(f"wrote {args.out}")
    return 0


def _run_recipe(args) -> dict:
    """Run the recipe's stages that the experts given by path do not replace, then point args at their folders and
    fill in what the command line left to the recipe (data, face views, precision and storage); -> the recipe."""
    from fusion.experts import recipe as recipes

    if not args.work:
        raise SystemExit("fusion bundle: --recipe needs --work (the stages' folder)")
    recipe = recipes.read_recipe(args.recipe)
    shared, work = Path(args.shared) if args.shared else recipes.default_shared(), Path(args.work)
    reused = {"voice": args.voice, "text": args.text, "face": args.face}
    folders = recipes.run_stages(recipe, work, shared=shared, reused=reused)
    plan = recipe["bundle"]
    args.voice = args.voice or (os.fspath(folders[plan["voice"]]) if plan.get("voice") else None)
    args.text = args.text or ([os.fspath(folders[plan["text"]])] if plan.get("text") else [])
    args.face = args.face or (os.fspath(folders[plan["face"]]) if plan.get("face") else None)

    def filled(text: str) -> str:
        return recipes.fill(text, shared=shared, work=work)

    args.face_data = args.face_data or (filled(plan["face_data"]) if args.face else None)
    args.text_data = args.text_data or (filled(plan["text_data"]) if args.text else None)
    args.voice_data = args.voice_data or [filled(d) for d in plan.get("voice_data", [])]
    args.face_views = plan.get("face_views", args.face_views)
    args.face_precision = plan.get("face_precision", args.face_precision)
    args.face_dtype = args.face_dtype or plan.get("face_dtype")
    return recipe


def _not_shipped(folder: str, names: list[str]) -> list[str]:
    """Training state, cached probabilities and scratch copies stay out of a bundle: only configs and weights
    (and a text ensemble's member folders) are copied."""
    keep = (".json", ".safetensors")
    return [n for n in names if n == "stored" or ((Path(folder) / n).is_file() and not n.endswith(keep))]


def bundle_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors"):
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
