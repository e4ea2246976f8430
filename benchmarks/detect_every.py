"""What detecting faces on every other sampled frame (face_detection.DETECT_EVERY) changes, against every frame.

    python benchmarks/detect_every.py ../shared/data/av-clips --out benchmarks/results/detect_every.md

For every clip: the detector calls, whether each frame has the main face in both runs, the IoU of the main face's
boxes where both have one (over the interpolated frames only: the others are detected in both runs), and the
shipped model's predictions (clip label, and the largest change of any probability, per clip and per segment).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fusion  # noqa: E402  (first: it sets the OpenMP wait policy before torch starts)
from encoders import face_detection as face  # noqa: E402
from fusion.media.decoding import decode  # noqa: E402
from fusion.media.streaming import MediaChunk  # noqa: E402


class CountingDetector(face.FaceDetector):
    """The real detector, counting its calls."""

    calls = 0

    def detect(self, frame: np.ndarray) -> np.ndarray:
        self.calls += 1
        return super().detect(frame)


def compare(clip: Path, predictor) -> dict:
    frames = decode(clip).frames
    detector = CountingDetector()
    runs = {}
    for every in (1, face.DETECT_EVERY):
        detector.calls = 0
        runs[every] = (face.extract_faces(frames, detector, every=every), detector.calls)
    (dense, dense_calls), (sparse, sparse_calls) = runs[1], runs[face.DETECT_EVERY]
    between = np.arange(len(frames)) % face.DETECT_EVERY != 0
    both = dense.present & sparse.present & between
    ious = [float(face._iou(dense.boxes[i], sparse.boxes[i][None])[0]) for i in np.flatnonzero(both)]

    media = decode(clip)
    predictions = {}
    for every in (1, face.DETECT_EVERY):
        faces = face.find_all_faces(media.frames, detector, times=media.frame_times, every=every)
        chunk = MediaChunk(media.path, 0.0, media.duration, media.audio, media.frame_times, faces)
        predictions[every] = predictor.predict_features(predictor.extractor.extract_chunk(chunk))
    a, b = predictions[1], predictions[face.DETECT_EVERY]
    labels = list(predictor.labels)
    clip_change = max(abs(a.summary.probabilities[k] - b.summary.probabilities[k]) for k in labels)
    segment_change = float(np.nanmax(np.abs(a.timeline[labels].to_numpy() - b.timeline[labels].to_numpy())))
    return {
        "clip": clip.name,
        "frames": len(frames),
        "detector_calls": [dense_calls, sparse_calls],
        "presence_agreement": float((dense.present == sparse.present).mean()),
        "interpolated_iou_min": min(ious) if ious else None,
        "interpolated_iou_median": float(np.median(ious)) if ious else None,
        "label": [a.summary.label, b.summary.label],
        "max_clip_probability_change": float(clip_change),
        "max_segment_probability_change": segment_change,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", help="folder searched recursively for *.mp4")
    parser.add_argument("--out", required=True, help="markdown file; a .json goes beside it")
    args = parser.parse_args()
    predictor = fusion.load()
    rows = [compare(clip, predictor) for clip in sorted(Path(args.clips).rglob("*.mp4"))]
    command = " ".join(["python", *sys.argv])
    machine = f"{platform.machine()}, torch {torch.__version__}, {predictor.device}"
    calls = np.array([r["detector_calls"] for r in rows]).sum(0)
    lines = [
        f"# Face detection on every frame vs every {face.DETECT_EVERY}nd frame",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Model: the shipped default checkpoint.",
        "",
        "| clip | frames | detector calls (every, sparse) | presence agreement | interpolated IoU min / median "
        "| label (every, sparse) | max Δp clip | max Δp segment |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        iou = (
            "-"
            if r["interpolated_iou_min"] is None
            else (f"{r['interpolated_iou_min']:.3f} / {r['interpolated_iou_median']:.3f}")
        )
        lines.append(
            f"| {r['clip']} | {r['frames']} | {r['detector_calls'][0]}, {r['detector_calls'][1]} "
            f"| {r['presence_agreement']:.3f} | {iou} | {r['label'][0]}, {r['label'][1]} "
            f"| {r['max_clip_probability_change']:.4f} | {r['max_segment_probability_change']:.4f} |"
        )
    lines += [
        "",
        f"Detector calls: {calls[0]} with every frame, {calls[1]} sparse ({calls[1] / calls[0]:.0%}). "
        f"Labels unchanged in {sum(r['label'][0] == r['label'][1] for r in rows)} of {len(rows)} clips; largest "
        f"change of any probability: {max(r['max_segment_probability_change'] for r in rows):.4f} (segment), "
        f"{max(r['max_clip_probability_change'] for r in rows):.4f} (clip).",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine, "clips": rows}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
