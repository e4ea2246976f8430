"""Where the voice expert's product path and its benchmark path part: the same fold model, the same files, one
difference at a time.

    python -m benchmarks.voice_skew --work ../cache/product --fold 0 --out benchmarks/results/voice_skew

For the test actors of one fold of benchmarks/product_path.py (its voice expert never heard them), each file's
7-class label by the voice expert alone, read:

1. as its benchmark reads it: the whole file, float32 Whisper states (the speech cache);
2. the whole file, bf16 states (as prediction computes them);
3. as prediction reads it: Whisper's segments where voice activity finds speech, bf16 states, the segments'
   probabilities averaged by duration (fusion.predict's summary);
4. the same segments with float32 states.

UA = macro recall over the 7 canonical classes (calm counted as neutral).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from alignment import make_segments
from benchmarks.child import describe_machine, write_results
from encoders.whisper_states import WhisperStates
from fusion.experts.bundle import ExpertBundle
from fusion.experts.voice import SpeechFeatures, VoiceExpert, predict_proba, to_canonical
from fusion.labels import EMOTIONS
from fusion.media.features import FeatureExtractor
from fusion.training.datasets import ravdess
from fusion.training.metrics import score
from fusion.training.splits import speaker_folds
from fusion.training.voice import SpeechCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--cache", default="../cache/speech")
    parser.add_argument("--work", required=True)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    speech = ravdess(Path(args.shared) / "data/ravdess-speech-16k").examples
    _, test = speaker_folds(speech, args.folds)[args.fold]
    examples = [speech[i] for i in test]
    folder = Path(args.work) / f"fold{args.fold}"
    voice = VoiceExpert.load(folder / "voice")
    bundle = ExpertBundle.load(folder / "bundle", experts=["voice"])
    block = bundle.whisper_block
    cached, _ = SpeechCache(args.cache).build([e.path for e in examples], progress=False)
    extractor = FeatureExtractor(whisper_blocks=block)
    fp32_states = WhisperStates(extractor.transcriber.model, blocks=block, bf16=False)
    labels = {name: [] for name in ("whole, fp32", "whole, bf16", "segments, bf16", "segments, fp32")}
    for example, features in zip(examples, cached):
        labels["whole, fp32"].append(_top(predict_proba(voice, [features])))
        piece = next(iter(extractor.stream(example.path, background=False)))
        bf16 = piece.whisper_states
        fp32, _ = fp32_states(_audio(example.path))
        blocks = np.zeros((block, *bf16.shape), np.float32)
        blocks[block - 1] = bf16  # the voice expert reads block `block` of the cache's all-blocks layout
        labels["whole, bf16"].append(_top(predict_proba(voice, [SpeechFeatures(piece.mel, blocks)])))
        segments = make_segments(piece.utterances, piece.duration, start=piece.start)
        for name, states in (("segments, bf16", bf16), ("segments, fp32", fp32)):
            labels[name].append(_segments_label(bundle, piece, segments, states))
    true = [e.label for e in examples]
    report = {
        "command": " ".join(["python -m benchmarks.voice_skew", *sys.argv[1:]]),
        "machine": describe_machine(),
        "files": len(examples),
        "ua": {name: score(true, guess, (*EMOTIONS, "none")).ua for name, guess in labels.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    write_results(report, Path(args.out), markdown)


def _top(probabilities: np.ndarray) -> str:
    return EMOTIONS[int(to_canonical(probabilities)[0].argmax())]


def _audio(path: str) -> np.ndarray:
    from fusion.media.decoding import decode

    return decode(path).audio


def _segments_label(bundle: ExpertBundle, piece, segments, states: np.ndarray) -> str:
    """The voice expert over the prediction's segments with these states; duration-weighted mean as the summary."""
    piece.whisper_states = states
    outputs = bundle.segment_probabilities(piece, segments)["audio"]
    durations = np.array([s.end - s.start for s in segments])
    rows = ~np.isnan(outputs).any(1)
    if not rows.any():
        return "none"
    return EMOTIONS[int(np.argmax((outputs[rows] * durations[rows, None]).sum(0)))]


def markdown(report: dict) -> str:
    lines = [
        "# The voice expert, one difference at a time between its benchmark path and fusion.predict's",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall time {report['wall_seconds']:.0f} s; {report['files']} files.",
        "",
        "| reading | UA, 7 classes |",
        "|---|---|",
        *(f"| {name} | {100 * ua:.1f} |" for name, ua in report["ua"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
