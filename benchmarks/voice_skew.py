"""Where the voice expert's product path and its benchmark path part: the same fold model, the same files, one
difference at a time.

    python -m benchmarks.voice_skew --work ../cache/product --fold 2 --out benchmarks/results/voice_skew/fold2

For the test actors of one fold of benchmarks/product_path.py (its voice expert never heard them), each file's
7-class label by the voice expert alone, read:

1. as its benchmark reads it: the whole file, float32 Whisper states (the speech cache);
2. the whole file, bf16 states (as prediction computes them);
3. as prediction reads it: Whisper's segments where the detector heard at least MIN_VOICE_S of speech, bf16 states,
   the segments' probabilities averaged by duration (fusion.predict's summary), with each of CONTEXTS seconds of
   the recording on either side of a segment read too (the bundle's voice_context_s).

Beside them, the median pause before and after each file's speech, as the voice activity detector hears it: the
context a whole training recording gives the voice.

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
from encoders.vad import FRAME_SECONDS as VAD_FRAME_S
from fusion.experts.bundle import ExpertBundle
from fusion.experts.voice import SpeechFeatures, VoiceExpert, predict_proba, to_canonical
from fusion.labels import EMOTIONS
from fusion.media.features import FeatureExtractor
from fusion.training.datasets import ravdess
from fusion.training.metrics import score
from fusion.training.splits import speaker_folds
from fusion.training.voice import SpeechCache

CONTEXTS = (0.0, 0.5, 1.0, 2.0)  # seconds of the recording read on either side of a segment


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
    labels = {"whole, fp32 (benchmark path)": [], "whole, bf16": []}
    labels |= {f"segments, bf16, context {c:g} s": [] for c in CONTEXTS}
    pauses = []  # (before, after) each file's speech, seconds, by the voice activity detector
    for example, features in zip(examples, cached):
        labels["whole, fp32 (benchmark path)"].append(_top(predict_proba(voice, [features])))
        piece = next(iter(extractor.stream(example.path, background=False)))
        heard = np.flatnonzero(piece.speech) * VAD_FRAME_S
        if len(heard):
            pauses.append((heard[0], piece.duration - heard[-1] - VAD_FRAME_S))
        bf16 = piece.whisper_states
        blocks = np.zeros((block, *bf16.shape), np.float32)
        blocks[block - 1] = bf16  # the voice expert reads block `block` of the cache's all-blocks layout
        labels["whole, bf16"].append(_top(predict_proba(voice, [SpeechFeatures(piece.mel, blocks)])))
        segments = make_segments(piece.utterances, piece.duration, start=piece.start)
        for context in CONTEXTS:
            bundle.voice_context_s = context
            labels[f"segments, bf16, context {context:g} s"].append(_segments_label(bundle, piece, segments))
    true = [e.label for e in examples]
    report = {
        "command": " ".join(["python -m benchmarks.voice_skew", *sys.argv[1:]]),
        "machine": describe_machine(),
        "files": len(examples),
        "voice": str(folder / "voice"),
        "ua": {name: score(true, guess, (*EMOTIONS, "none")).ua for name, guess in labels.items()},
        "median_pause_s": dict(zip(("before", "after"), np.median(pauses, axis=0).tolist())),
        "wall_seconds": time.perf_counter() - started,
    }
    write_results(report, Path(args.out), markdown)


def _top(probabilities: np.ndarray) -> str:
    return EMOTIONS[int(to_canonical(probabilities)[0].argmax())]


def _segments_label(bundle: ExpertBundle, piece, segments) -> str:
    """The voice expert over the prediction's segments; their duration-weighted mean as the summary."""
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
        f"Machine: {report['machine']}; wall time {report['wall_seconds']:.0f} s; {report['files']} files; the fold's"
        f" voice expert: {report['voice']}.",
        "",
        "| reading | UA, 7 classes |",
        "|---|---|",
        *(f"| {name} | {100 * ua:.1f} |" for name, ua in report["ua"].items()),
        "",
        f"Pause around each file's speech (voice activity detector), median: {report['median_pause_s']['before']:.2f} s"
        f" before, {report['median_pause_s']['after']:.2f} s after.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
