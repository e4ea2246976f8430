"""Who is on camera (alignment.active_speaker): mouth crops, mouth motion, the speaker chosen, the segment column;
and on a recording built from a real clip, through the predictor."""

from __future__ import annotations

import numpy as np
import pytest

from alignment.active_speaker import mouth_motion, segments_on_camera, speaker_on_camera
from alignment.diarization import Turn
from encoders.face_detection import MOUTH_LINE, MOUTH_SIZE, crop_mouth


def test_the_mouth_crop_is_cut_at_the_mouth_line_of_the_face_box():
    frame = np.zeros((400, 400, 3), np.uint8)
    box = np.array([100.0, 100.0, 160.0, 200.0])  # side 200: the mouth line at y = 100 + 0.735 * 200 = 247
    mouth_y = int(100 + MOUTH_LINE * 200)
    frame[mouth_y - 5 : mouth_y + 5, 160:200] = 255  # lips: a bright bar across the middle of the face
    crop = crop_mouth(frame, box)
    assert crop.shape == (MOUTH_SIZE[1], MOUTH_SIZE[0]) and crop.dtype == np.uint8
    rows = crop.mean(1)
    assert abs(int(np.argmax(rows)) - MOUTH_SIZE[1] // 2) <= 1  # the bar is in the crop's middle row
    assert crop[0].max() == 0 and crop[-1].max() == 0  # eyes and chin are outside it
    off_frame = crop_mouth(frame, np.array([-300.0, -300.0, 100.0, 100.0]))
    assert off_frame.shape == crop.shape and off_frame.max() == 0  # zero padded, not an error


def test_mouth_motion_ignores_light_and_missing_faces():
    rng = np.random.default_rng(0)
    still = rng.integers(0, 200, (1, 24, 32)).repeat(4, 0).astype(np.uint8)
    still[2] += 40  # the light changes, the mouth does not move
    motion = mouth_motion(still, np.ones(4, bool))
    assert np.isnan(motion[0]) and np.allclose(motion[1:], 0, atol=0.6)
    moving = rng.integers(0, 255, (4, 24, 32)).astype(np.uint8)
    present = np.array([True, True, False, True])
    motion = mouth_motion(moving, present)
    assert motion[1] > 50 and np.isnan(motion[2]) and np.isnan(motion[3])  # no face then, or the frame before
    assert mouth_motion(moving[:1], present[:1]).shape == (1,)


def _frames(turns, moves, quiet=1.0):
    """5 fps face frames over turns [(start, end, speaker)], motion moves[speaker] while they speak and `quiet`
    in the pause after each turn; (turns, times, motion, speaking)."""
    times, motion, speaking = [], [], []
    for start, end, speaker in turns:
        inside = np.arange(start, end, 0.2)
        times += list(inside)
        motion += [moves[speaker]] * len(inside)
        speaking += [True] * len(inside)
        pause = np.arange(end, end + 1.0, 0.2)
        times += list(pause)
        motion += [quiet] * len(pause)
        speaking += [False] * len(pause)
    turns = [Turn(s, e, who) for s, e, who in turns]
    return turns, np.array(times), np.array(motion, np.float32), np.array(speaking)


def test_the_speaker_whose_speech_moves_the_mouth_most_is_on_camera():
    spoken = [(0.0, 3.0, "S1"), (4.0, 8.0, "S2"), (9.0, 11.0, "S1")]
    assert speaker_on_camera(*_frames(spoken, {"S1": 1.5, "S2": 4.0})) == {"S1": False, "S2": True}
    # no speaker moves it more than silence does: the face shown is nobody's who speaks
    assert speaker_on_camera(*_frames(spoken, {"S1": 0.8, "S2": 0.9})) == {"S1": False, "S2": False}
    # one speaker, whose speech moves the mouth: on camera
    assert speaker_on_camera(*_frames([(0.0, 3.0, "S1")], {"S1": 3.0})) == {"S1": True}


def test_a_speaker_with_too_few_face_frames_is_unknown():
    turns, times, motion, speaking = _frames([(0.0, 3.0, "S1"), (4.0, 4.4, "S2")], {"S1": 3.0, "S2": 9.0})
    assert speaker_on_camera(turns, times, motion, speaking) == {"S1": True, "S2": None}
    motion[:] = np.nan  # no face at all
    assert speaker_on_camera(turns, times, motion, speaking) == {"S1": None, "S2": None}


def test_a_segment_is_unknown_without_a_speaker_or_a_face():
    on_camera = {"S1": True, "S2": False}
    speakers = ["S1", "S2", None, "S1", "S2"]
    face = [1.0, 0.5, 1.0, 0.0, float("nan")]
    assert segments_on_camera(speakers, face, on_camera) == [True, False, None, None, None]


@pytest.fixture(scope="module")
def question_and_answer(shared, ravdess_clips, tmp_path_factory):
    """A real clip as the answer to a question another actor asks while the clip's actor's face is silent."""
    from benchmarks.active_speaker import interview

    folder = tmp_path_factory.mktemp("active")
    path, _, voiced = interview(ravdess_clips[0], shared / "data/ravdess-speech-16k", folder)
    return path, voiced


def test_the_answer_is_on_camera_and_the_question_is_not(question_and_answer):
    from benchmarks.active_speaker import truth
    from fusion.serving.predictor import Predictor

    path, voiced = question_and_answer
    result = Predictor(speakers=True).predict(path, n_speakers=2)
    scored = 0
    for row in result.timeline.itertuples():
        expected = truth(row.start, row.end, voiced)
        if expected is None:  # a pause
            continue
        scored += 1
        assert row.on_camera_speaking is expected, row
        # the face counts only where it is the speaker's
        assert ("video" in row.modalities.split(",")) is expected, row
    assert scored >= 3  # the question, the answer and the follow-up
    shown = [s for s, theirs in result.summary.speakers.items() if theirs.on_camera]
    assert result.for_speaker("on-camera").summary.speaker == shown[0]
    assert result.for_speaker("all") is result
