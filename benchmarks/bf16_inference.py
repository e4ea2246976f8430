"""What the default model's CPU speed levers cost in accuracy, and what they save: bf16 face expert, bf16 Whisper
states, the face expert on every other face frame.

    python -m benchmarks.bf16_inference --out benchmarks/results/default_model/bf16_inference.md

- Face expert: FER2013 PublicTest through the shipped face expert (two views), float32 against bf16 autocast, in
  batches of 16 and 32: accuracy and faces per second.
- Whisper states: the states after the voice expert's block of 120 s of RAVDESS speech (the first 40 files of the
  speech folder, concatenated), float32 against bf16: seconds (best of 2) and the mean absolute difference over the
  mean magnitude; then the default model's label for every 12th RAVDESS speech file through fusion.predict, with
  the states in each precision (these are files the voice expert trained on: a check that the label survives the
  rounding, not an accuracy).
- Face frame stride: each segment of the shared clips scored by the face expert from every face frame and from every
  FACE_FRAME_STRIDE-th one: segments with the same label and the largest probability difference.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import torch

from alignment import make_segments
from benchmarks.child import describe_machine
from encoders import SAMPLE_RATE
from encoders.whisper_states import WhisperStates
from fusion.experts import bundle as bundle_module
from fusion.experts import face as face_expert
from fusion.labels import EMOTIONS
from fusion.serving.predictor import DEFAULT_CHECKPOINT, Predictor
from fusion.training.datasets import image_folder

STATE_SECONDS = 120  # of RAVDESS speech for timing the states
EVERY_NTH_FILE = 12  # of the RAVDESS speech files, for the label check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--fer-test", default="../shared/data/fer2013/validation")
    parser.add_argument("--speech", default="../shared/data/ravdess-speech-16k")
    parser.add_argument("--clips", default="../shared/data/av-clips")
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    predictor = Predictor(args.checkpoint)
    bundle = predictor.bundle
    lines = [
        "# CPU speed levers of the default model: bf16 and the face frame stride",
        "",
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.bf16_inference', *sys.argv[1:]])}`  ",
        f"Machine: {describe_machine()}  ",
    ]
    body = face_precision(bundle, args.fer_test) + whisper_states(predictor, args.speech)
    body += frame_stride(predictor, args.clips)
    lines += [f"Wall time: {(time.perf_counter() - started) / 60:.1f} min", "", *body]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def face_precision(bundle, fer_test: str) -> list[str]:
    examples = image_folder(fer_test).examples
    images = face_expert.read_faces([e.path for e in examples])
    truth = np.array([EMOTIONS.index(e.label) for e in examples])
    rows = ["## Face expert, FER2013 PublicTest (two views)", "", "| precision | batch | accuracy | faces/s |"]
    rows.append("|---|---|---|---|")
    for bf16 in (False, True):
        for batch in (16, 32):
            face_expert.predict_proba(bundle.face, images[:64], views="flip", bf16=bf16, batch_size=batch)
            start = time.perf_counter()
            p = face_expert.predict_proba(bundle.face, images, views="flip", bf16=bf16, batch_size=batch)
            rate = len(images) / (time.perf_counter() - start)
            accuracy = 100 * np.mean(p.argmax(1) == truth)
            rows.append(f"| {'bf16' if bf16 else 'fp32'} | {batch} | {accuracy:.2f} | {rate:.0f} |")
    return rows + [""]


def whisper_states(predictor, speech: str) -> list[str]:
    files = sorted(Path(speech).rglob("*.flac"))
    audio = np.concatenate([librosa.load(f, sr=SAMPLE_RATE)[0] for f in files[:40]])[: SAMPLE_RATE * STATE_SECONDS]
    model, blocks = predictor.extractor.transcriber.model, predictor.bundle.whisper_block
    seconds, states = {}, {}
    for bf16 in (False, True):
        encoder = WhisperStates(model, blocks=blocks, bf16=bf16)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            states[bf16], _ = encoder(audio)
            times.append(time.perf_counter() - start)
        seconds[bf16] = min(times)
    difference = np.abs(states[True] - states[False]).mean() / np.abs(states[False]).mean()
    shipped = predictor.extractor.whisper_states
    labels, probabilities = {}, {}
    checked = files[::EVERY_NTH_FILE]
    for bf16 in (False, True):
        shipped.bf16 = bf16
        summaries = [predictor.predict(f).summary for f in checked]
        labels[bf16] = [s.label for s in summaries]
        probabilities[bf16] = np.array([[s.probabilities[c] for c in EMOTIONS] for s in summaries])
    shipped.bf16 = True
    same = sum(a == b for a, b in zip(labels[False], labels[True]))
    return [
        f"## Whisper states (block {blocks} of the transcribing model)",
        "",
        f"{len(audio) / SAMPLE_RATE:.0f} s of RAVDESS speech: {seconds[False]:.2f} s in fp32, {seconds[True]:.2f} s in "
        f"bf16 ({seconds[False] / seconds[True]:.1f}x); mean absolute difference {100 * difference:.1f}% of the mean "
        f"magnitude. Default model's label through fusion.predict on {len(checked)} RAVDESS files (every "
        f"{EVERY_NTH_FILE}th; training speech of the voice expert): the same on {same}; largest probability "
        f"difference {np.abs(probabilities[True] - probabilities[False]).max():.3f}.",
        "",
    ]


def frame_stride(predictor, clips_folder: str) -> list[str]:
    clips = sorted(Path(clips_folder).rglob("*.mp4"))
    same = total = 0
    largest = 0.0
    stride = bundle_module.FACE_FRAME_STRIDE
    for clip in clips:
        for piece in predictor.extractor.stream(clip, chunk_s=predictor.chunk_s):
            if piece.face_present is None or not piece.face_present.any():
                continue
            segments = make_segments(piece.utterances, piece.duration, start=piece.start)
            out = {}
            for s in (1, stride):
                bundle_module.FACE_FRAME_STRIDE = s
                out[s] = np.full((len(segments), len(EMOTIONS)), np.nan, np.float32)
                predictor.bundle._face(piece, segments, out[s])
            bundle_module.FACE_FRAME_STRIDE = stride
            rows = ~np.isnan(out[1]).any(1)
            total += int(rows.sum())
            same += int((out[1][rows].argmax(1) == out[stride][rows].argmax(1)).sum())
            largest = max(largest, float(np.abs(out[1][rows] - out[stride][rows]).max(initial=0.0)))
    return [
        f"## Face expert on every {stride}-th face frame of a segment (FACE_FRAME_STRIDE)",
        "",
        f"{len(clips)} shared clips, {total} segments with a face: the same face label on {same}; largest probability "
        f"difference {largest:.3f}.",
    ]


if __name__ == "__main__":
    main()
