"""The `fusion` command line."""

from __future__ import annotations

import argparse
import sys

from alignment import DEFAULT_WINDOW_S, SEGMENT_MODES
from fusion.errors import FusionError, ModelNotFoundError
from fusion.predictor import Predictor

FORMATS = ("table", "json", "csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusion", description="Multimodal emotion recognition from recordings.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="emotion timeline of one recording")
    predict.add_argument("file", help="video or audio file (anything FFmpeg reads)")
    predict.add_argument("--checkpoint", help="checkpoint folder (default: $FUSION_CHECKPOINT or the shipped model)")
    predict.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    predict.add_argument("--output", "-o", help="write to this file instead of standard output")
    predict.add_argument(
        "--segments",
        choices=SEGMENT_MODES,
        default="utterance",
        help="utterance: Whisper's utterances (default); window: fixed windows",
    )
    predict.add_argument(
        "--window",
        type=float,
        default=DEFAULT_WINDOW_S,
        help=f"window length in seconds for silence and --segments window (default {DEFAULT_WINDOW_S})",
    )
    predict.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    predict.add_argument("--whisper-model", help="Whisper name or checkpoint path (default: $FUSION_WHISPER_MODEL)")
    predict.add_argument("--text-model", help="text model name or folder (default: $FUSION_TEXT_MODEL)")
    predict.add_argument("--face-model", help="YuNet .onnx path (default: $FUSION_FACE_MODEL, else Haar cascade)")

    args = parser.parse_args(argv)
    try:
        return _predict(args)
    except (FusionError, ModelNotFoundError) as error:
        print(f"fusion: error: {error}", file=sys.stderr)
        return 1


def _predict(args: argparse.Namespace) -> int:
    predictor = Predictor(
        args.checkpoint,
        whisper_model=args.whisper_model,
        text_model=args.text_model,
        face_model=args.face_model,
        device=args.device,
    )
    result = predictor.predict(args.file, segments=args.segments, window_s=args.window)
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


def _table(result) -> str:
    lines = [f"{result.file}  ({result.duration:.2f} s, modalities: {', '.join(result.summary['modalities'])})"]
    lines.append(f"{'start':>7} {'end':>7}  {'label':<10} {'p':>5}  {'modalities':<17} text")
    for row in result.timeline.itertuples(index=False):
        p = getattr(row, row.label) if row.label else float("nan")
        lines.append(
            f"{row.start:7.2f} {row.end:7.2f}  {row.label or '-':<10} {p:5.2f}  {row.modalities:<17} {row.text}"
        )
    summary = result.summary
    lines.append(f"overall: {summary['label']} ({summary['probabilities'][summary['label']]:.2f})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
