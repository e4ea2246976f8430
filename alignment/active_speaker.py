"""Who is on camera: whether the main face is the one speaking, from its mouth moving while speech is heard.

For each pair of consecutive sampled face frames (DEFAULT_FPS, 5 a second), the mouth's motion is the mean
absolute grey-level difference over the lower face of the 48x48 crop less that over the eyes: a turn of the head or
a change of light moves both, speaking moves the mouth more. A segment's face is speaking when the mean mouth motion
of its face frames inside speech exceeds the face's motion while no one speaks by MOUTH_THRESHOLD; a segment with no
such frame is unknown (None).

Five frames a second are too few to follow syllables, so this tells a talking face from a still one (a listener),
not which of two talking faces is in sync with the voice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Regions of the 48x48 grey crop (forehead to chin, encoders.face_detection): the mouth and the eyes, (rows, columns)
MOUTH = (slice(32, 46), slice(12, 36))
EYES = (slice(8, 22), slice(6, 42))
# Grey levels (0-255) by which the mouth must move more than the eyes, on average over a segment's speech frames,
# beyond what it does while no one speaks (the recording's baseline: the median over its face frames outside speech,
# when it has at least MIN_BASELINE_FRAMES of them; else 0). Set a priori to 0: a speaking mouth moves more than a
# silent one. On the 11 shared RAVDESS clips the speech frames' mean was above the silent frames' in every clip.
MOUTH_THRESHOLD = 0.0
MIN_BASELINE_FRAMES = 3


def mouth_motion(crops: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(n, 48, 48) uint8 face crops and (n,) bool face present -> (n,) float32 mouth motion of each frame against
    the one before (grey levels), NaN for the first frame and where either frame has no face."""
    crops = crops.astype(np.float32)
    motion = np.full(len(crops), np.nan, np.float32)
    if len(crops) < 2:
        return motion
    mouth = np.abs(np.diff(crops[:, MOUTH[0], MOUTH[1]], axis=0)).mean((1, 2))
    eyes = np.abs(np.diff(crops[:, EYES[0], EYES[1]], axis=0)).mean((1, 2))
    both = present[1:] & present[:-1]
    motion[1:] = np.where(both, mouth - eyes, np.nan)
    return motion


def on_camera_speaking(
    segments: Sequence[tuple[float, float]], times: np.ndarray, motion: np.ndarray, speaking: np.ndarray
) -> list[bool | None]:
    """For each segment (start, end) in seconds: whether the face on camera speaks in it (None: no face frame
    inside speech there). times (n,) seconds of the face frames, motion (n,) from mouth_motion, speaking (n,) bool:
    whether speech is heard at each frame (voice activity)."""
    known = ~np.isnan(motion)
    quiet = known & ~speaking
    baseline = float(np.median(motion[quiet])) if quiet.sum() >= MIN_BASELINE_FRAMES else 0.0
    out: list[bool | None] = []
    for start, end in segments:
        inside = (times >= start) & (times < end) & speaking & known
        out.append(bool(motion[inside].mean() - baseline > MOUTH_THRESHOLD) if inside.any() else None)
    return out
