"""Shared fixtures: the real models and data in ../shared (or $FUSION_SHARED).

Tests that need them skip with a reason when the folder is absent (a user's fresh clone); CI always has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FUSION_SHARED", REPO_ROOT.parent / "shared"))
HAVE_SHARED = (SHARED / "models").is_dir() and (SHARED / "data").is_dir()
SKIP_REASON = f"needs the shared models and data at {SHARED} (set FUSION_SHARED to their folder)"

# CI sets FUSION_REQUIRE_SHARED=1: there, a missing ../shared fails the run instead of skipping the real-data tests.
REQUIRE_SHARED = os.environ.get("FUSION_REQUIRE_SHARED", "") == "1"
if REQUIRE_SHARED and not HAVE_SHARED:
    raise pytest.UsageError(f"FUSION_REQUIRE_SHARED=1 but {SKIP_REASON}")

requires_shared = pytest.mark.skipif(not HAVE_SHARED, reason=SKIP_REASON)

if HAVE_SHARED:
    # CI sets these; a developer's checkout beside ../shared gets the same defaults.
    os.environ.setdefault("FUSION_WHISPER_MODEL", str(SHARED / "models/whisper/tiny.en.pt"))
    os.environ.setdefault("FUSION_TEXT_MODEL", str(SHARED / "models/text/all-MiniLM-L6-v2"))
    os.environ.setdefault("FUSION_FACE_MODEL", str(SHARED / "models/face/face_detection_yunet.onnx"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not HAVE_SHARED:
        pytest.skip(SKIP_REASON)  # ../shared is absent: a fresh clone without the shared models and data
    return SHARED


@pytest.fixture(scope="session")
def ravdess_clips(shared: Path) -> list[Path]:
    """The 11 real audio-visual RAVDESS clips (H.264/AAC mp4)."""
    return sorted((shared / "data/av-clips/ravdess").glob("*.mp4"))


@pytest.fixture(scope="session")
def no_audio_clip(shared: Path) -> Path:
    """A real RAVDESS clip re-encoded to MPEG-4 video with its audio track removed."""
    return shared / "data/av-clips/no-audio/01-01-08-02-01-01-19.mp4"
