"""The face path's first half: find the main face in sampled video frames and crop it like FER2013.

Detection uses OpenCV's YuNet (an ONNX file, configured with ``FUSION_FACE_MODEL`` or the ``model`` argument)
and falls back to OpenCV 4's bundled Haar cascade when no model is configured. Nothing here needs torch, so the
decoding process (fusion.media.streaming.DecodeWorker) stays light; the face CNN is in :mod:`encoders.face`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from encoders.loading import FACE_ENV, ModelNotFoundError, choose_model

FACE_SIZE = 48  # pixels: side of the grey face crop, as in FER2013
# Fraction of the box side added around the detected box before cropping. YuNet's box already spans forehead to
# chin (it is taller than wide, and the crop side is max(w, h)), which is how FER2013 frames faces. Measured with
# YuNet's landmarks on 517 FER2013 training images vs. crops of the 12 shared clips, as fractions of the crop side
# (medians): eye distance 0.357 vs. 0.341, eye line 0.381 vs. 0.382, mouth line 0.735 vs. 0.727 at margin 0.0; a
# margin of 0.1 shrinks the face to an eye distance of 0.310, below three quarters of FER2013 faces.
FACE_MARGIN = 0.0
# pixels: frames are downscaled so their longer side is at most this before detection (the input size of OpenCV's
# YuNet sample; faces in recorded video fill a good part of the frame); boxes are mapped back to full resolution
DETECT_MAX_SIDE = 320
# YuNet confidence threshold. Frontal faces in the shared clips score 0.92-0.95, just above OpenCV's default of 0.9,
# so that default would drop a turned or blurred face; a stray box let through does not persist across frames,
# so select_main_face does not pick it.
MIN_SCORE = 0.7
TRACK_IOU = 0.3  # IoU with a track's latest box needed to extend it; a talking head at 5 fps moves far less
# The detector runs on every DETECT_EVERY-th sampled frame (at 5 fps: every 0.4 s); a frame in between takes boxes
# interpolated from the detections either side when those agree, else it is detected too. Detection is the face
# path's largest cost, and a speaker's face moves little in 0.4 s.
DETECT_EVERY = 2
# IoU each face's boxes either side of a frame must have for the frame's boxes to be interpolated: a stricter
# match than TRACK_IOU, since a box drawn rather than detected must not be far off
INTERPOLATE_IOU = 0.5
# The mouth, cut from the full-resolution frame for alignment.active_speaker: a box MOUTH_WIDTH by MOUTH_HEIGHT of the
# face crop's side, centred on the mouth line (MOUTH_LINE of the side from the crop's top: YuNet's mouth corners lie
# at 0.727-0.735 of it, measured with FACE_MARGIN above), resized to MOUTH_SIZE (width, height) pixels of grey. The
# 48x48 crop leaves the lips a dozen pixels: too few to see them move from one frame to the next.
MOUTH_LINE = 0.735
MOUTH_WIDTH = 0.5
MOUTH_HEIGHT = 0.4
MOUTH_SIZE = (32, 24)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_MIN_NEIGHBORS = 5  # overlapping Haar hits needed to accept a face: OpenCV's recommended value


class FaceDetector:
    """Finds faces in BGR frames: YuNet (cv2.FaceDetectorYN) when a model file is configured, else OpenCV 4's
    bundled Haar cascade."""

    backend: str  # "yunet" or "haar"
    model: str | None  # the YuNet file as given (None: Haar), so another process can load the same detector

    def __init__(self, model: str | os.PathLike | None = None):
        path = choose_model(model, env_var=FACE_ENV, default=None)
        self.model = path
        if path is None:
            self.backend = "haar"
            self._haar = _load_haar()
            return
        if not Path(path).expanduser().is_file():
            raise ModelNotFoundError(
                what="YuNet face detector",
                requested=path,
                env_var=FACE_ENV,
                argument="face_model",
                reason="no such file",
            )
        self.backend = "yunet"
        self._input_size = (DETECT_MAX_SIDE, DETECT_MAX_SIDE)
        try:
            self._yunet = cv2.FaceDetectorYN.create(
                str(Path(path).expanduser()), "", self._input_size, score_threshold=MIN_SCORE
            )
        except cv2.error as err:
            raise ModelNotFoundError(
                what="YuNet face detector",
                requested=path,
                env_var=FACE_ENV,
                argument="face_model",
                reason="OpenCV cannot read it as a YuNet ONNX model",
            ) from err

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> (n, 5) float32 rows x, y, w, h, score in full-resolution pixels (score 1.0 for
        Haar)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 BGR frame, got {frame.shape} {frame.dtype}")
        height, width = frame.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = frame if size == (width, height) else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        if self.backend == "yunet":
            if size != self._input_size:
                self._yunet.setInputSize(size)
                self._input_size = size
            _, faces = self._yunet.detect(small)
            rows = np.zeros((0, 5), np.float32) if faces is None else faces[:, [0, 1, 2, 3, 14]]
        else:
            grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            boxes = np.asarray(self._haar.detectMultiScale(grey, minNeighbors=HAAR_MIN_NEIGHBORS), np.float32)
            boxes = boxes.reshape(-1, 4)
            rows = np.concatenate([boxes, np.ones((len(boxes), 1), np.float32)], axis=1)
        # the downscaled frame was resized per axis to whole pixels, so map each axis back with its own ratio
        to_full = np.array([width / size[0], height / size[1]] * 2 + [1.0], np.float32)
        return rows * to_full


def _load_haar() -> cv2.CascadeClassifier:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None or not hasattr(cv2, "CascadeClassifier") or not (Path(folder) / HAAR_CASCADE).is_file():
        raise ModelNotFoundError(
            what="Haar cascade face detector",
            requested=HAAR_CASCADE,
            env_var=FACE_ENV,
            argument="face_model",
            reason=f"OpenCV {cv2.__version__} does not ship Haar cascades (OpenCV 5 removed them), so the YuNet "
            f"face detector (face_detection_yunet.onnx) must be configured",
        )
    cascade = cv2.CascadeClassifier(str(Path(folder) / HAAR_CASCADE))
    if cascade.empty():
        raise ModelNotFoundError(
            what="Haar cascade face detector",
            requested=str(Path(folder) / HAAR_CASCADE),
            env_var=FACE_ENV,
            argument="face_model",
            reason="OpenCV could not parse the cascade file",
        )
    return cascade


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(4,) box and (n, 4) boxes, x, y, w, h -> (n,) intersection over union."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


def main_face_indices(detections: list[np.ndarray]) -> np.ndarray:
    """Per-frame detections -> (n_frames,) int64: the row of each frame's detections that is the main face, -1
    where it is absent.

    Each element of ``detections`` is an (n, 4 or 5) array of x, y, w, h (and score) rows. The main face is the
    largest and most persistent: detections are linked across frames into tracks by IoU with each track's latest
    box (a track survives frames where it was missed), each track is scored by the sum of its box areas, and the
    best track is kept.
    """
    tracks: list[dict[int, int]] = []  # frame index -> row of that frame's detections
    latest_box: list[np.ndarray] = []  # per track, its latest box
    for t, dets in enumerate(detections):
        boxes = np.asarray(dets, np.float32)[:, :4]
        extended: set[int] = set()
        # larger boxes pick their track first, so a small face next to the main one cannot steal its track
        for row in np.argsort(-boxes[:, 2] * boxes[:, 3]):
            box = boxes[row]
            free = [k for k in range(len(tracks)) if k not in extended]
            if free:
                overlaps = _iou(box, np.stack([latest_box[k] for k in free]))
                best = int(np.argmax(overlaps))
                if overlaps[best] >= TRACK_IOU:
                    tracks[free[best]][t] = int(row)
                    latest_box[free[best]] = box
                    extended.add(free[best])
                    continue
            tracks.append({t: int(row)})
            latest_box.append(box)
            extended.add(len(tracks) - 1)
    main = np.full(len(detections), -1, np.int64)
    if tracks:

        def area(track: dict[int, int]) -> float:
            return sum(float(detections[t][row][2] * detections[t][row][3]) for t, row in track.items())

        for t, row in max(tracks, key=area).items():
            main[t] = row
    return main


def select_main_face(detections: list[np.ndarray]) -> np.ndarray:
    """Per-frame detections -> (n_frames, 4) float32 boxes of the main face (see main_face_indices), NaN rows where
    it is absent."""
    main = np.full((len(detections), 4), np.nan, np.float32)
    for t, row in enumerate(main_face_indices(detections)):
        if row >= 0:
            main[t] = np.asarray(detections[t], np.float32)[row, :4]
    return main


def crop_face(frame: np.ndarray, box: np.ndarray, *, margin: float = FACE_MARGIN) -> np.ndarray:
    """(H, W, 3) BGR frame, (4,) box -> (FACE_SIZE, FACE_SIZE) uint8 grey: a square around the box centre, side
    max(w, h) * (1 + margin), zero padded where it leaves the frame, converted to grey and resized (INTER_AREA)."""
    x, y, w, h = (float(v) for v in box)
    if not np.isfinite([x, y, w, h]).all() or w <= 0 or h <= 0:
        raise ValueError(f"expected a finite box with positive width and height, got {box}")
    side = max(1, round(max(w, h) * (1 + margin)))
    square = _grey_patch(frame, round(x + w / 2 - side / 2), round(y + h / 2 - side / 2), side, side)
    return cv2.resize(square, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)


def _grey_patch(frame: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """(height, width) uint8 grey of the frame from (left, top), zero padded where it leaves the frame."""
    frame_height, frame_width = frame.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, frame_width), min(top + height, frame_height)
    patch = np.zeros((height, width), np.uint8)
    if x1 > x0 and y1 > y0:
        patch[y0 - top : y1 - top, x0 - left : x1 - left] = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
    return patch


def crop_mouth(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR frame, (4,) face box -> (MOUTH_SIZE[1], MOUTH_SIZE[0]) uint8 grey crop of the mouth (see
    MOUTH_LINE), from the full-resolution frame, zero padded where it leaves the frame."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h)
    centre_x, centre_y = x + w / 2, y + h / 2 + (MOUTH_LINE - 0.5) * side
    width, height = max(1, round(MOUTH_WIDTH * side)), max(1, round(MOUTH_HEIGHT * side))
    patch = _grey_patch(frame, round(centre_x - width / 2), round(centre_y - height / 2), width, height)
    return cv2.resize(patch, MOUTH_SIZE, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class FrameFaces:
    """The faces found in one sampled frame, already cropped, so that the frame itself need not be kept."""

    boxes: np.ndarray  # (n, 5) float32 x, y, w, h, score in frame pixels
    crops: np.ndarray  # (n, FACE_SIZE, FACE_SIZE) uint8 grey, one per box
    mouths: np.ndarray  # (n, MOUTH_SIZE[1], MOUTH_SIZE[0]) uint8 grey, one per box (crop_mouth)


_NO_CROPS = np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
_NO_MOUTHS = np.zeros((0, MOUTH_SIZE[1], MOUTH_SIZE[0]), np.uint8)


def find_faces(frame: np.ndarray, detector: FaceDetector) -> FrameFaces:
    """(H, W, 3) uint8 BGR -> every face the detector finds, with its crop."""
    return _faces(frame, detector.detect(frame))


def _faces(frame: np.ndarray, boxes: np.ndarray) -> FrameFaces:
    if not len(boxes):
        return FrameFaces(boxes=boxes, crops=_NO_CROPS, mouths=_NO_MOUTHS)
    crops = np.stack([crop_face(frame, box[:4]) for box in boxes])
    return FrameFaces(boxes=boxes, crops=crops, mouths=np.stack([crop_mouth(frame, box[:4]) for box in boxes]))


def _interpolate(before: np.ndarray, after: np.ndarray, weight: float) -> np.ndarray | None:
    """Detections (n, 5) either side of a frame -> its boxes, a weight (0 = before, 1 = after) of the way between;
    None when the two do not show the same faces (a different count, or a pair below INTERPOLATE_IOU)."""
    if len(before) != len(after):
        return None
    rows = []
    unmatched = list(range(len(after)))
    for box in before[np.argsort(-before[:, 2] * before[:, 3])]:
        overlaps = _iou(box[:4], after[unmatched, :4])
        best = int(np.argmax(overlaps))
        if overlaps[best] < INTERPOLATE_IOU:
            return None
        match = after[unmatched.pop(best)]
        row = (1 - weight) * box + weight * match
        row[4] = min(box[4], match[4])
        rows.append(row)
    return np.asarray(rows, np.float32).reshape(-1, 5)


class FaceFinder:
    """Finds the faces in a sequence of frames, running the detector on every ``every``-th frame only.

        finder = FaceFinder(detector)
        for time, frame in frames:
            for time, faces in finder.push(time, frame):  # the frames resolved so far, in order
                ...
        for time, faces in finder.finish():  # the rest
            ...

    A frame between two detected ones gets boxes interpolated (by time) from theirs when they show the same faces
    (see INTERPOLATE_IOU), else the detector runs on it as well; so frames come out up to every - 1 frames late,
    and at most every - 1 frames are held.
    """

    def __init__(self, detector: FaceDetector, *, every: int = DETECT_EVERY):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.detector = detector
        self.every = every
        self._last: tuple[float, np.ndarray] | None = None  # time and detections of the latest detected frame
        self._held: list[tuple[float, np.ndarray]] = []  # frames since then, not yet resolved

    def push(self, time: float, frame: np.ndarray) -> list[tuple[float, FrameFaces]]:
        """Add the next frame, (H, W, 3) uint8 BGR at time (seconds, increasing); returns the frames now resolved."""
        if self._last is not None and len(self._held) < self.every - 1:
            self._held.append((time, frame))
            return []
        boxes = self.detector.detect(frame)
        resolved = self._resolve_held(time, boxes) + [(time, _faces(frame, boxes))]
        self._last = time, boxes
        return resolved

    def finish(self) -> list[tuple[float, FrameFaces]]:
        """The frames still held, detected one by one (nothing follows them to interpolate towards)."""
        held, self._held = self._held, []
        return [(time, find_faces(frame, self.detector)) for time, frame in held]

    def _resolve_held(self, time: float, boxes: np.ndarray) -> list[tuple[float, FrameFaces]]:
        if not self._held:
            return []
        resolved = []
        last_time, last_boxes = self._last
        for held_time, frame in self._held:
            span = time - last_time
            weight = (held_time - last_time) / span if span > 0 else 0.5
            between = _interpolate(last_boxes, boxes, weight)
            resolved.append((held_time, _faces(frame, self.detector.detect(frame) if between is None else between)))
        self._held = []
        return resolved


def find_all_faces(
    frames: np.ndarray, detector: FaceDetector, *, times: np.ndarray | None = None, every: int = DETECT_EVERY
) -> list[FrameFaces]:
    """(n_frames, H, W, 3) uint8 BGR at times (n_frames,) seconds (default: evenly spaced) -> the faces in each
    frame (see FaceFinder)."""
    times = np.arange(len(frames), dtype=np.float64) if times is None else times
    finder = FaceFinder(detector, every=every)
    found = [faces for time, frame in zip(times, frames) for _, faces in finder.push(float(time), frame)]
    return found + [faces for _, faces in finder.finish()]


@dataclass(frozen=True)
class FaceCrops:
    crops: np.ndarray  # (n_frames, FACE_SIZE, FACE_SIZE) uint8 grey; all zeros where no face
    present: np.ndarray  # (n_frames,) bool
    boxes: np.ndarray  # (n_frames, 4) float32 x, y, w, h in frame pixels; NaN where no face
    mouths: np.ndarray  # (n_frames, MOUTH_SIZE[1], MOUTH_SIZE[0]) uint8 grey crops of its mouth; zeros where no face


def main_face_crops(frames: list[FrameFaces]) -> FaceCrops:
    """The faces found in consecutive frames -> the main face's crop in every frame. Works for no frames."""
    rows = main_face_indices([f.boxes for f in frames])
    crops = np.zeros((len(frames), FACE_SIZE, FACE_SIZE), np.uint8)
    boxes = np.full((len(frames), 4), np.nan, np.float32)
    mouths = np.zeros((len(frames), MOUTH_SIZE[1], MOUTH_SIZE[0]), np.uint8)
    for t in np.flatnonzero(rows >= 0):
        crops[t] = frames[t].crops[rows[t]]
        boxes[t] = frames[t].boxes[rows[t], :4]
        mouths[t] = frames[t].mouths[rows[t]]
    return FaceCrops(crops=crops, present=rows >= 0, boxes=boxes, mouths=mouths)


def extract_faces(frames: np.ndarray, detector: FaceDetector, *, every: int = DETECT_EVERY) -> FaceCrops:
    """(n_frames, H, W, 3) uint8 BGR, evenly spaced in time -> the main face's crop in every frame, the detector run
    on every ``every``-th frame (see FaceFinder). Works for n_frames == 0."""
    return main_face_crops(find_all_faces(frames, detector, every=every))
