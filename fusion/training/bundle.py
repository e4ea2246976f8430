"""Building a bundle (fusion.experts.bundle) from trained experts, and `fusion bundle`.

    fusion bundle --recipe fusion/checkpoints/default/experts.json --work runs/default --out runs/model

Each expert is calibrated on its own validation data (a temperature and a class prior, fusion.training.calibration)
and copied in; with ``--recipe`` the experts are trained first, stage by stage (fusion.training.recipe), so the
shipped model is rebuilt by this one resumable command.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from encoders.runtime import PRECISIONS
from fusion.experts import face as face_expert
from fusion.experts.bundle import (
    BUNDLE_FILE,
    FOLDERS,
    FORMAT_VERSION,
    LEARNED_FOLDER,
    VOICE_CONTEXT_S,
    ExpertBundle,
)
from fusion.experts.late_fusion import LateFusion, calibrated_log_probabilities
from fusion.experts.text import load_expert
from fusion.experts.voice import VOICE_LABELS, to_canonical, voice_label
from fusion.labels import EMOTIONS, label_indices
from fusion.storage import CONFIG_FILE, STORED_DTYPES, WEIGHTS_FILE, write_atomic
from fusion.training.calibration import fit_temperature
from fusion.training.loop import balanced_weights


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
        # which experts the bundle has: a folder of these that goes missing is an error when it loads
        "experts": {"voice": _name(voice), "text": _name(text), "face": _name(face)},
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
    voice_context_s: float = VOICE_CONTEXT_S,
    gates: dict[str, float] | None = None,
    neutral_as_absence: bool = False,
    certainty: float = 0.0,
    learned: str | os.PathLike | None = None,
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
    voice_context_s: seconds of the recording on each side of a segment that the voice expert reads with it
    (fusion.experts.bundle.ExpertBundle.voice_context_s).
    face_dtype: store the face expert's weights so (a name in experts.state.STORED_DTYPES; "int8": 3.6 MB,
    PublicTest 68.7 against 69.0 in float32) instead of copying them as they are. recipe: the recipe that made the
    experts (fusion.training.recipe), recorded in experts.json so that `fusion bundle --recipe` on the bundle
    retrains it.
    """
    from fusion.training.face import stratified_split
    from fusion.training.text import items_from_examples, split_by_dialogue

    temperatures, priors, record = {}, {}, {}
    names = {"voice": _name(voice), "text": [_name(t) for t in text], "face": _name(face)}  # as given, for the record
    if face is not None and face_dtype is not None:
        face = _stored_as(face, face_dtype, Path(scratch or out) / ".face")
    if face is not None:
        model = face_expert.FaceExpert.load(face)
        training = json.loads((Path(face) / CONFIG_FILE).read_text())["training"]
        labels = [e.label for e in face_examples]
        _, held = stratified_split(labels, fraction=training["validation_fraction"], seed=training["config"]["seed"])
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
    _place_learned(out, learned)
    assemble(
        out,
        voice=voice,
        text=text_folder,
        face=face,
        late_fusion=LateFusion(
            temperatures,
            {m: 1.0 for m in FOLDERS},
            priors,
            _gates(gates),
            neutral_as_absence,
            certainty=certainty,
        ),
        face_views=face_views,
        face_precision=face_precision,
        extra={
            "voice_context_s": voice_context_s,
            "experts": names,
            "calibration": record,
        }
        | ({"learned_fusion": os.fspath(learned)} if learned is not None else {})
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
    config = json.loads((Path(face) / CONFIG_FILE).read_text())
    extra = {k: v for k, v in config.items() if k != "model"} | {"dtype": dtype}
    if scratch.exists():
        shutil.rmtree(scratch)
    return face_expert.FaceExpert.load(face).save(scratch, extra=extra, dtype=STORED_DTYPES[dtype])


def _mean_calibrated(probabilities: np.ndarray, temperature: float) -> list[float]:
    return np.exp(calibrated_log_probabilities(probabilities, temperature)).mean(0).tolist()


def _sampler_prior(examples: Sequence) -> list[float]:
    """The canonical class mix that the voice expert's sampler draws (fusion.training.loop.balanced_weights by
    corpus)."""
    labels = [voice_label(e.dataset, e.label, e.native_label) for e in examples]
    weights = balanced_weights(labels, [e.dataset for e in examples]).numpy()
    mix = np.array([[weights[[x == label for x in labels]].sum() for label in VOICE_LABELS]]) / weights.sum()
    return to_canonical(mix)[0].tolist()


def _name(path) -> str | None:
    return None if path is None else os.fspath(path)


def _ensemble_folder(folders: Sequence[str | os.PathLike], scratch: Path) -> Path:
    """Text expert folders as one ensemble folder (fusion.experts.text.TextEnsemble) in scratch."""
    from fusion.training.text import member_folder, write_ensemble

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
        "one; fusion/training/recipe.py); experts given by path are reused",
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
    parser.add_argument(
        "--voice-context",
        type=float,
        default=VOICE_CONTEXT_S,
        metavar="S",
        help=f"seconds of audio on each side of a segment that the voice expert reads with it (default"
        f" {VOICE_CONTEXT_S:g}: the pauses its training recordings have around their speech)",
    )
    parser.add_argument(
        "--learned-fusion",
        metavar="FOLDER",
        help="fuse by this learned cross-attention fusion instead of late fusion alone (benchmarks/fusion_gates.py"
        " --save-learned writes it)",
    )
    parser.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="EXPERT=GAMMA",
        help="gate an expert (text, face) by its own evidence of emotion: weight (1 - q(neutral))^GAMMA"
        " (benchmarks/fusion_gates.py chooses GAMMA)",
    )
    parser.add_argument(
        "--neutral-as-absence",
        action="store_true",
        help="a gated expert counts not at all where it sees less emotion than its prior expects"
        " (fusion.experts.late_fusion)",
    )
    parser.add_argument(
        "--certainty",
        type=float,
        default=0.0,
        metavar="KAPPA",
        help="weight a gated expert also by its certainty which emotion it sees, (its top emotion's share of"
        " q(not neutral))^KAPPA (fusion.experts.late_fusion; benchmarks/fusion_gates.py measures KAPPA 1)",
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
        voice_context_s=args.voice_context,
        gates=dict(_gate_spec(g) for g in args.gate) or None,
        neutral_as_absence=args.neutral_as_absence,
        certainty=args.certainty,
        learned=args.learned_fusion,
    )
    print(json.dumps(record, indent=2))
    print(f"wrote {args.out}")
    return 0


def _run_recipe(args) -> dict:
    """Run the recipe's stages that the experts given by path do not replace, then point args at their folders and
    fill in what the command line left to the recipe (data, face views, precision and storage); -> the recipe."""
    from fusion.training import recipe as recipes

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
    args.voice_temperature = plan.get("voice_temperature", args.voice_temperature)
    args.voice_context = plan.get("voice_context_s", args.voice_context)
    args.neutral_as_absence = args.neutral_as_absence or plan.get("neutral_as_absence", False)
    args.certainty = args.certainty or plan.get("certainty", 0.0)
    args.gate = args.gate or [f"{expert}={gamma}" for expert, gamma in plan.get("gates", {}).items()]
    # the recipe as this bundle is made, so that `fusion bundle --recipe` on it makes it again
    gates = dict(_gate_spec(g) for g in args.gate)
    plan = plan | {"voice_temperature": args.voice_temperature, "voice_context_s": args.voice_context}
    plan = plan | ({"neutral_as_absence": True} if args.neutral_as_absence else {})
    plan = plan | ({"certainty": args.certainty} if args.certainty else {})
    plan = plan | ({"gates": gates} if gates else {})
    return recipe | {"bundle": plan}


def _place_learned(out: str | os.PathLike, learned: str | os.PathLike | None) -> None:
    """The learned fusion's folder (fusion.experts.attention, as benchmarks/fusion_gates.py --save-learned writes
    it) copied into the bundle; a bundle built without one has none."""
    target = Path(out) / LEARNED_FOLDER
    if learned is not None and Path(learned).resolve() == target.resolve():
        return
    if target.exists():
        shutil.rmtree(target)
    if learned is not None:
        shutil.copytree(learned, target, ignore=_not_shipped)


def _gate_spec(text: str) -> tuple[str, float]:
    """EXPERT=GAMMA -> (expert, gamma); SystemExit with the reason when malformed."""
    expert, _, gamma = text.partition("=")
    try:
        value = float(gamma)
    except ValueError:
        value = float("nan")
    if expert not in ("text", "face") or not 0 <= value < float("inf"):
        raise SystemExit(f"fusion bundle: --gate takes text=GAMMA or face=GAMMA with GAMMA 0 or above, got {text!r}")
    return expert, value


def _gates(gates: dict[str, float] | None) -> dict[str, float]:
    """{expert name: gamma} -> late fusion's {modality: gamma}."""
    modality = {name: m for m, name in FOLDERS.items()}
    return {modality[name]: gamma for name, gamma in (gates or {}).items()}


def _not_shipped(folder: str, names: list[str]) -> list[str]:
    """Training state, cached probabilities and scratch copies stay out of a bundle: only configs and weights
    (and a text ensemble's member folders) are copied."""
    keep = (".json", ".safetensors")
    return [n for n in names if n == "stored" or ((Path(folder) / n).is_file() and not n.endswith(keep))]
