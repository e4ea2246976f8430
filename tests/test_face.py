"""Face path: detection on the real RAVDESS clips (YuNet and the Haar fallback), main-face tracking, crops, FaceCNN."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from encoders.face import FaceCNN, face_pixels
from encoders.face_detection import FACE_SIZE, FaceDetector, crop_face, extract_faces, select_main_face
from encoders.loading import FACE_ENV, ModelNotFoundError

FRAME_STEP = 6  # every 6th frame of the 30 fps clips: about 5 fps, the rate the pipeline samples at
MAX_PARAMETERS = 2_500_000


def sample_frames(path: Path, step: int = FRAME_STEP) -> np.ndarray:
    """mp4 -> (n, H, W, 3) uint8 BGR, every step-th frame; independent of fusion.media.decoding."""
    with av.open(str(path)) as container:
        frames = [
            frame.to_ndarray(format="bgr24") for i, frame in enumerate(container.decode(video=0)) if i % step == 0
        ]
    return np.stack(frames)


@pytest.fixture(scope="session")
def clip_frames(ravdess_clips: list[Path]) -> dict[str, np.ndarray]:
    assert len(ravdess_clips) == 11
    return {path.name: sample_frames(path) for path in ravdess_clips}


@pytest.fixture(scope="session")
def yunet(shared: Path) -> FaceDetector:
    detector = FaceDetector()  # conftest points FUSION_FACE_MODEL at the shared YuNet file
    assert detector.backend == "yunet"
    return detector


def test_yunet_finds_the_face_in_every_ravdess_clip(clip_frames: dict[str, np.ndarray], yunet: FaceDetector):
    rates = {name: extract_faces(frames, yunet).present.mean() for name, frames in clip_frames.items()}
    assert all(rate >= 0.9 for rate in rates.values()), rates


def test_yunet_finds_the_face_in_the_no_audio_clip(no_audio_clip: Path, yunet: FaceDetector):
    frames = sample_frames(no_audio_clip)
    assert frames.shape[1:] == (720, 720, 3)
    faces = extract_faces(frames, yunet)
    assert faces.present.mean() >= 0.9


@pytest.mark.parametrize("level", [0, 128])
def test_blank_frame_has_no_face(yunet: FaceDetector, level: int):
    frame = np.full((720, 1280, 3), level, np.uint8)
    assert yunet.detect(frame).shape == (0, 5)
    faces = extract_faces(frame[None], yunet)
    assert not faces.present[0]
    assert np.isnan(faces.boxes[0]).all()
    assert faces.crops.shape == (1, FACE_SIZE, FACE_SIZE) and not faces.crops.any()


def test_no_frames(yunet: FaceDetector):
    faces = extract_faces(np.zeros((0, 720, 1280, 3), np.uint8), yunet)
    assert faces.crops.shape == (0, FACE_SIZE, FACE_SIZE)
    assert faces.present.shape == (0,) and faces.boxes.shape == (0, 4)


def test_boxes_are_in_full_resolution_pixels(clip_frames: dict[str, np.ndarray], yunet: FaceDetector):
    frame = next(iter(clip_frames.values()))[0]
    detections = yunet.detect(frame)
    assert detections.dtype == np.float32 and detections.shape[1] == 5
    x, y, w, h = select_main_face([detections])[0]
    assert 0 <= x and x + w <= 1280 and 0 <= y and y + h <= 720
    assert 100 <= w <= 700 and 100 <= h <= 700


def test_select_main_face_prefers_the_large_persistent_face():
    big = np.array([500, 100, 300, 400, 0.95], np.float32)
    small = np.array([100, 100, 40, 50, 0.8], np.float32)
    moved = big + np.array([10, 5, 0, 0, 0], np.float32)  # the same face, moved a little
    detections = [
        np.stack([big, small]),
        np.stack([moved]),
        np.stack([small]),  # the main face was missed here
        np.zeros((0, 5), np.float32),
        np.stack([small, big]),
    ]
    boxes = select_main_face(detections)
    assert boxes.shape == (5, 4) and boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes[[0, 4]], big[None, :4].repeat(2, axis=0))
    np.testing.assert_array_equal(boxes[1], moved[:4])
    assert np.isnan(boxes[[2, 3]]).all()


def test_select_main_face_without_detections():
    assert np.isnan(select_main_face([np.zeros((0, 5), np.float32)] * 3)).all()
    assert select_main_face([]).shape == (0, 4)


def test_haar_fallback_finds_the_face(clip_frames: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(FACE_ENV, raising=False)
    detector = FaceDetector(model=None)
    assert detector.backend == "haar"
    frames = next(iter(clip_frames.values()))
    assert extract_faces(frames, detector).present.mean() >= 0.8


def test_missing_yunet_file_names_path_and_env_var(tmp_path: Path):
    missing = tmp_path / "no-such-yunet.onnx"
    with pytest.raises(ModelNotFoundError) as caught:
        FaceDetector(model=missing)
    assert str(missing) in str(caught.value) and FACE_ENV in str(caught.value)


def test_missing_yunet_file_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    missing = tmp_path / "from-env.onnx"
    monkeypatch.setenv(FACE_ENV, str(missing))
    with pytest.raises(ModelNotFoundError, match=FACE_ENV) as caught:
        FaceDetector()
    assert str(missing) in str(caught.value)


def test_crop_from_a_ravdess_frame(clip_frames: dict[str, np.ndarray], yunet: FaceDetector):
    frames = next(iter(clip_frames.values()))[:3]
    faces = extract_faces(frames, yunet)
    assert faces.crops.shape == (3, FACE_SIZE, FACE_SIZE) and faces.crops.dtype == np.uint8
    crop = crop_face(frames[0], faces.boxes[0])
    np.testing.assert_array_equal(crop, faces.crops[0])
    assert crop.std() > 10


def test_crop_pads_with_zeros_outside_the_frame():
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_face(frame, np.array([-50, -50, 100, 100], np.float32), margin=0.0)
    assert crop.shape == (FACE_SIZE, FACE_SIZE) and crop.dtype == np.uint8
    half = FACE_SIZE // 2
    assert not crop[: half - 1].any() and not crop[:, : half - 1].any()
    assert (crop[half + 1 :, half + 1 :] == 200).all()


def test_face_pixels():
    crops = np.array([[0, 255]], np.uint8).repeat(FACE_SIZE * FACE_SIZE // 2).reshape(1, FACE_SIZE, FACE_SIZE)
    pixels = face_pixels(crops)
    assert pixels.shape == (1, 1, FACE_SIZE, FACE_SIZE) and pixels.dtype == torch.float32
    assert pixels.min() == 0.0 and pixels.max() == 1.0


def test_face_cnn_shapes_random_init():
    model = FaceCNN(dim=128).eval()
    assert sum(p.numel() for p in model.parameters()) < MAX_PARAMETERS
    crops = np.random.default_rng(0).integers(0, 256, (3, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    with torch.no_grad():
        embeddings = model(face_pixels(crops))
    assert embeddings.shape == (3, 128) and torch.isfinite(embeddings).all()
    assert sum(p.numel() for p in FaceCNN().parameters()) < MAX_PARAMETERS
