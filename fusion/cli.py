"""The `fusion` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from alignment import DEFAULT_WINDOW_S, SEGMENT_MODES
from encoders.loading import EncoderSources
from fusion.errors import FusionError, check_writable
from fusion.experts import EXPERTS
from fusion.labels import MODALITIES
from fusion.serving.batch import ENGINES, ScoreOptions, score_files
from fusion.serving.predictor import Predictor, resolve_checkpoint
from fusion.training.ablation import AblationConfig, ablate
from fusion.training.augment import AugmentConfig
from fusion.training.cache import FeatureCache
from fusion.training.datasets import DATA_KINDS, from_specs
from fusion.training.expert_ablation import ablate_experts
from fusion.training.metrics import METRICS
from fusion.training.train import TrainConfig, train_checkpoint

FORMATS = ("table", "json", "csv")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands_by_name = {
        "predict": _predict,
        "features": _features,
        "train": _train,
        "ablate": _ablate,
        "score": _score,
        "train-expert": lambda args: importlib.import_module(f"fusion.experts.{args.modality}").run(args),
        "bundle": lambda args: importlib.import_module("fusion.experts.bundle").run(args),
    }
    try:
        return commands_by_name[args.command](args)
    except FusionError as error:  # ModelNotFoundError included
        print(f"fusion: error: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The `fusion` command line: one subcommand per task (predict, score, features, train, ablate, train-expert,
    bundle)."""
    parser = argparse.ArgumentParser(prog="fusion", description="Multimodal emotion recognition from recordings.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="emotion timeline of one recording")
    predict.add_argument("file", help="video or audio file (anything FFmpeg reads)")
    predict.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    predict.add_argument("--output", "-o", help="write to this file instead of standard output")
    _add_prediction_options(predict)

    data_help = "a corpus as KIND=PATH: " + ", ".join(DATA_KINDS) + " (repeat for several)"
    features = commands.add_parser("features", help="compute and cache the features of corpora (resumable)")
    features.add_argument("--data", action="append", required=True, help=data_help)
    features.add_argument("--cache", required=True, help="feature cache folder")
    _add_model_options(features)

    train = commands.add_parser("train", help="train a checkpoint on corpora (features from the cache)")
    train.add_argument("--data", action="append", required=True, help=data_help)
    train.add_argument("--cache", required=True, help="feature cache folder (filled on first use)")
    train.add_argument("--out", required=True, help="checkpoint folder to write")
    train.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    train.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size)
    train.add_argument("--learning-rate", type=positive_float, default=TrainConfig.learning_rate)
    train.add_argument("--examples-per-epoch", type=positive_int, help="examples drawn per epoch (default: all)")
    train.add_argument("--validation-fraction", type=float, default=0.15, help="share of each corpus's speakers")
    train.add_argument("--no-augment", action="store_true", help="train without data augmentation")
    train.add_argument("--seed", type=int, default=TrainConfig.seed)
    train.add_argument("--half", action="store_true", help="store the weights in float16 (half the file size)")
    train.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    _add_model_options(train)

    ablate = commands.add_parser(
        "ablate", help="modality ablation: each subset of modalities, retrained and dropped, or an experts bundle's"
    )
    ablate.add_argument("data", nargs="+", help="corpora as KIND=PATH: " + ", ".join(DATA_KINDS))
    ablate.add_argument(
        "--experts",
        nargs="?",
        const="default",
        metavar="BUNDLE",
        help="ablate an experts bundle instead of training (no value: the shipped default model); the training"
        " options below then do not apply",
    )
    ablate.add_argument(
        "--out-of-fold",
        action="append",
        default=[],
        type=out_of_fold_spec,
        metavar="MODALITY=FOLDER",
        help="with --experts: that expert's outputs trained without the test speakers (*seed<S>-fold<K>.npz files of"
        " paths and probabilities), used instead of the bundle's; repeat to add seeds",
    )
    ablate.add_argument("--modalities", help="comma-separated, e.g. audio,text (default: all the data has)")
    ablate.add_argument("--seeds", type=positive_int, default=3, help="training seeds 0..N-1 (default 3)")
    ablate.add_argument("--folds", type=int, default=3, help="speaker-independent folds (default 3)")
    ablate.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    ablate.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size)
    ablate.add_argument("--validation-fraction", type=float, default=0.15, help="0: no early stopping")
    ablate.add_argument("--no-augment", action="store_true", help="train without data augmentation")
    ablate.add_argument("--metric", choices=METRICS, default="ua", help="metric of the differences (default ua)")
    ablate.add_argument("--workers", type=positive_int, default=1, help="parallel training processes, 1 thread each")
    ablate.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    ablate.add_argument("--cache", required=True, help="feature cache folder (filled on first use)")
    ablate.add_argument("--out", required=True, help="folder for ablation.md, ablation.json, ablation.png")
    _add_model_options(ablate)

    expert = commands.add_parser("train-expert", help="train one modality's expert alone (resumable)")
    experts = expert.add_subparsers(dest="modality", required=True)
    for modality in EXPERTS:
        module = importlib.import_module(f"fusion.experts.{modality}")
        module.add_arguments(experts.add_parser(modality, help=module.__doc__.splitlines()[0]))

    bundle = commands.add_parser(
        "bundle", help="combine trained experts into one model, each calibrated on its own validation data"
    )
    importlib.import_module("fusion.experts.bundle").add_arguments(bundle)

    score = commands.add_parser(
        "score", help="score many recordings into one table (resumable; bad files go to an errors table)"
    )
    score.add_argument("inputs", nargs="+", help="media files, folders (searched recursively) or manifests")
    score.add_argument("--out", required=True, help="segments table: .parquet, .csv or .jsonl")
    score.add_argument("--workers", type=positive_int, default=1, help="worker processes (or Ray tasks at a time)")
    score.add_argument("--engine", choices=ENGINES, default="local", help="local processes, or Ray ($RAY_ADDRESS)")
    score.add_argument("--plots", help="folder for one PNG per file: probabilities over time and the transcript")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_prediction_options(score)
    return parser


def out_of_fold_spec(text: str) -> str:
    """argparse type: MODALITY=FOLDER, a modality the models know and a folder of *seed<S>-fold<K>.npz files."""
    modality, _, folder = text.partition("=")
    if modality not in MODALITIES or not folder:
        known = ", ".join(MODALITIES)
        raise argparse.ArgumentTypeError(f"expected MODALITY=FOLDER with a modality of {known}: {text!r}")
    if not any(Path(folder).glob("*seed*-fold*.npz")):
        raise argparse.ArgumentTypeError(f"{folder}: no *seed<S>-fold<K>.npz files of out-of-fold outputs")
    return text


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _add_prediction_options(command: argparse.ArgumentParser) -> None:
    """The options of every command that predicts: which models, on which device, with which segments."""
    command.add_argument("--checkpoint", help="checkpoint folder (default: $FUSION_CHECKPOINT or the shipped model)")
    command.add_argument(
        "--segments",
        choices=SEGMENT_MODES,
        default="utterance",
        help="utterance: Whisper's utterances (default); window: fixed windows",
    )
    command.add_argument(
        "--window",
        type=positive_float,
        default=DEFAULT_WINDOW_S,
        help=f"window length in seconds for silence and --segments window (default {DEFAULT_WINDOW_S})",
    )
    command.add_argument(
        "--speakers",
        nargs="?",
        type=positive_int,
        const=0,
        metavar="N",
        help="find who speaks when: a speaker column (S1, S2, ... by first speech) and a summary per speaker;"
        " N: how many people speak, when known (default: estimated, 1 or 2)",
    )
    command.add_argument(
        "--speaker",
        metavar="S1",
        help="report one speaker's segments and summary: S1, S2, ..., on-camera (the speaker whose face is shown) or"
        " all (implies --speakers)",
    )
    command.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    _add_model_options(command)


def _add_model_options(command: argparse.ArgumentParser) -> None:
    """The options of every command that extracts features: which frozen models (see _sources)."""
    command.add_argument("--whisper-model", help="Whisper name or checkpoint path (default: $FUSION_WHISPER_MODEL)")
    command.add_argument("--text-model", help="text model name or folder (default: $FUSION_TEXT_MODEL)")
    command.add_argument("--face-model", help="YuNet .onnx path (default: $FUSION_FACE_MODEL, else Haar cascade)")


def _sources(args: argparse.Namespace) -> EncoderSources:
    """The frozen models chosen on the command line; the rest are resolved where they load (environment, checkpoint,
    default)."""
    return EncoderSources(whisper=args.whisper_model, text=args.text_model, face=args.face_model)


def _predict(args: argparse.Namespace) -> int:
    if args.output:
        check_writable(args.output)  # before any model loads
    speakers = args.speakers is not None or args.speaker is not None
    predictor = Predictor(args.checkpoint, sources=_sources(args), device=args.device, speakers=speakers)
    result = predictor.predict(
        args.file, segments=args.segments, window_s=args.window, n_speakers=args.speakers or None
    )
    if args.speaker is not None:
        result = result.for_speaker(args.speaker)
    if args.format == "json":
        text = result.to_json() + "\n"
    elif args.format == "csv":
        text = result.to_csv()
    else:
        text = _table(result)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _features(args: argparse.Namespace) -> int:
    manifest = from_specs(args.data)
    _, report = FeatureCache(args.cache, sources=_sources(args)).build(manifest.examples)
    print(report)
    return 0 if not (report.skipped or manifest.skipped) else 1


def _train(args: argparse.Namespace) -> int:
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        examples_per_epoch=args.examples_per_epoch,
        augment=AugmentConfig(enabled=not args.no_augment),
        seed=args.seed,
    )
    folder, result = train_checkpoint(
        args.data,
        cache_dir=args.cache,
        out=args.out,
        validation_fraction=args.validation_fraction,
        train_config=config,
        device=args.device,
        weights_dtype=torch.float16 if args.half else torch.float32,
        sources=_sources(args),
    )
    best = result.history[result.best_epoch - 1]
    print(f"wrote {folder} (best epoch {result.best_epoch}: validation UA {best.get('ua', float('nan')):.3f})")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    if args.out_of_fold and args.experts is None:
        raise SystemExit("fusion ablate: error: --out-of-fold needs --experts")
    if args.experts is not None:
        config = AblationConfig(
            modalities=tuple(args.modalities.split(",")) if args.modalities else None,
            folds=args.folds,
            metric=args.metric,
        )
        ablate_experts(
            args.data,
            bundle_path=resolve_checkpoint(None if args.experts == "default" else args.experts),
            cache_dir=args.cache,
            out=args.out,
            config=config,
            out_of_fold=args.out_of_fold,
            device=args.device,
            sources=_sources(args),
        )
        print((Path(args.out) / "ablation.md").read_text())
        return 0
    config = AblationConfig(
        modalities=tuple(args.modalities.split(",")) if args.modalities else None,
        seeds=tuple(range(args.seeds)),
        folds=args.folds,
        validation_fraction=args.validation_fraction,
        metric=args.metric,
        workers=args.workers,
        train=TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, augment=AugmentConfig(enabled=not args.no_augment)
        ),
    )
    ablate(args.data, cache_dir=args.cache, out=args.out, config=config, device=args.device, sources=_sources(args))
    print((Path(args.out) / "ablation.md").read_text())
    return 0


def _score(args: argparse.Namespace) -> int:
    options = ScoreOptions(
        checkpoint=args.checkpoint,
        sources=_sources(args),
        device=args.device,
        segments=args.segments,
        window_s=args.window,
        plots=args.plots,
        speakers=args.speakers is not None or args.speaker is not None,
        n_speakers=args.speakers or None,
        speaker=args.speaker,
    )
    report = score_files(
        args.inputs, args.out, options=options, workers=args.workers, engine=args.engine, progress=not args.quiet
    )
    print(report)
    return 0 if report.ok else 1


def _table(result) -> str:
    lines = [f"{result.file}  ({result.duration:.2f} s, modalities: {', '.join(result.summary['modalities'])})"]
    who = "speaker" in result.timeline.columns
    lines.append(f"{'start':>7} {'end':>7}  {'label':<10} {'p':>5}  {'modalities':<17} {'who  ' if who else ''}text")
    for row in result.timeline.itertuples(index=False):
        p = getattr(row, row.label) if row.label else float("nan")
        speaker = f"{row.speaker or '-':<4} " if who else ""
        where = f"{row.start:7.2f} {row.end:7.2f}  {row.label or '-':<10} {p:5.2f}  {row.modalities:<17}"
        lines.append(f"{where} {speaker}{row.text}")
    summary = result.summary
    lines.append(f"{summary.get('speaker', 'overall')}: {_top(summary)}")
    for speaker, theirs in summary.get("speakers", {}).items():
        lines.append(f"{speaker}: {_top(theirs)}, {theirs['seconds']:.1f} s")
    return "\n".join(lines) + "\n"


def _top(summary: dict) -> str:
    """ "neutral (0.59)", or "-" for a summary with no label."""
    label = summary["label"]
    return f"{label} ({summary['probabilities'][label]:.2f})" if label else "-"


if __name__ == "__main__":
    sys.exit(main())
