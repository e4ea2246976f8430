"""Who is on camera: which of a recording's speakers is the main face, from how much its mouth moves while each
speaker is heard.

A face frame's mouth motion is the mean absolute grey-level change of its mouth crop (encoders.face_detection.
crop_mouth, cut from the full frame) since the frame before, each crop less its own mean so that a change of light
does not count. A speaking mouth moves more than a listening one, but how much more depends on the face, the camera
and the frame rate (5 a second: too few to follow syllables), so no fixed threshold tells the two apart. Instead
the speakers are compared with each other within the recording: the one whose speech comes with the most mouth
motion is the face on camera, provided that motion is above the face's motion while no one speaks (when the
recording has such frames); the others are not on camera. Probed on the 11 shared RAVDESS clips, each preceded by
the same face silent under another actor's voice (benchmarks/active_speaker.py), speaking moved the mouth more than
listening in all 11, while a threshold on the ratio to the silent motion, the same for every face, was right on
about four segments in five.

This assumes the main face is one of the speakers, as in an interview filmed on one camera; a face that only ever
listens is taken for the speaker who moves it most, when that is more than it moves in silence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alignment.diarization import Turn

# Face frames with speech needed to judge a speaker's mouth motion (0.6 s at 5 fps: a short answer), and face frames
# without speech needed for the silent baseline; with fewer, a speaker is unknown and there is no baseline.
MIN_FRAMES = 3


def mouth_motion(mouths: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(n, h, w) uint8 grey mouth crops and (n,) bool face present -> (n,) float32 mouth motion of each frame since
    the one before (grey levels), NaN for the first frame and where either frame has no face."""
    motion = np.full(len(mouths), np.nan, np.float32)
    if len(mouths) < 2:
        return motion
    crops = mouths.astype(np.float32)
    crops -= crops.mean((1, 2), keepdims=True)
    change = np.abs(np.diff(crops, axis=0)).mean((1, 2))
    motion[1:] = np.where(present[1:] & present[:-1], change, np.nan)
    return motion


def speaker_on_camera(
    turns: Sequence[Turn], times: np.ndarray, motion: np.ndarray, speaking: np.ndarray
) -> dict[str, bool | None]:
    """Whether each speaker of turns is the face on camera: True for at most one, None for a speaker with under
    MIN_FRAMES face frames in their speech. times (n,) seconds of the face frames, motion (n,) from mouth_motion
    (NaN: no face), speaking (n,) bool: whether speech is heard at each frame (voice activity)."""
    known = ~np.isnan(motion)
    quiet = known & ~speaking
    baseline = float(np.median(motion[quiet])) if quiet.sum() >= MIN_FRAMES else None
    moved: dict[str, float | None] = {}
    for speaker in dict.fromkeys(t.speaker for t in turns):
        theirs = np.zeros(len(times), bool)
        for turn in turns:
            if turn.speaker == speaker:
                theirs |= (times >= turn.start) & (times < turn.end)
        frames = theirs & speaking & known
        moved[speaker] = float(motion[frames].mean()) if frames.sum() >= MIN_FRAMES else None
    judged = {s: m for s, m in moved.items() if m is not None}
    top = max(judged, key=judged.get) if judged else None
    if top is not None and baseline is not None and judged[top] <= baseline:
        top = None  # no speaker moves the mouth more than silence does: the face shown is not speaking
    return {s: None if m is None else s == top for s, m in moved.items()}


def segments_on_camera(
    speakers: Sequence[str | None], face_present: Sequence[float], on_camera: dict[str, bool | None]
) -> list[bool | None]:
    """Per segment: whether its speaker is the face on camera; None (unknown) where the segment has no speaker, no
    face in any of its frames (face_present 0, or NaN without video) or its speaker could not be judged."""
    out: list[bool | None] = []
    for speaker, share in zip(speakers, face_present):
        visible = share == share and share > 0  # NaN (no video track) is not visible
        out.append(on_camera.get(speaker) if speaker and visible else None)
    return out
