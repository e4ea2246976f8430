"""fusion.media.decoding.decode on the real av-clips, on re-encodings of one into other containers, and on broken
files."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from encoders import SAMPLE_RATE
from fusion.errors import MediaError
from fusion.media.decoding import Media, decode

CLIP_SECONDS = 2.0  # length of the re-encoded excerpts: enough to sample 10 frames, quick to encode on 2 cores
SMALL = (320, 180)  # width, height of the re-encoded excerpts
TOLERANCE = 0.1  # seconds allowed between a decoded and a declared duration
GREY_STEP = 30  # grey levels between consecutive frames of the variable-frame-rate video

# container suffix -> (video encoder or None, audio encoder); all ship with the FFmpeg that PyAV bundles.
CONTAINERS = {
    "mkv": ("libx264", "aac"),
    "webm": ("libvpx", "libopus"),
    "flv": ("flv", "aac"),
    "mov": ("libx264", "aac"),
    "m4a": (None, "aac"),
    "wav": (None, "pcm_s16le"),
    "flac": (None, "flac"),
}
# Fastest settings of the slow video encoders: quality is irrelevant here, test time on 2 shared cores is not.
ENCODER_OPTIONS = {"libx264": {"preset": "ultrafast"}, "libvpx": {"deadline": "realtime", "cpu-used": "8"}}


def container_duration(path: Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / av.time_base


def check_media(media: Media, path: Path) -> None:
    """The invariants every decoded recording satisfies."""
    assert abs(media.duration - container_duration(path)) < TOLERANCE
    if media.has_audio:
        assert media.audio.ndim == 1 and media.audio.dtype == np.float32
        assert abs(len(media.audio) / SAMPLE_RATE - media.duration) < TOLERANCE
        assert np.abs(media.audio).max() <= 1.0
    if media.has_video:
        times = media.frame_times
        assert times.dtype == np.float64 and times.shape == (len(media.frames),)
        assert np.all(np.diff(times) > 0) and times[0] >= 0 and times[-1] < media.duration
        assert media.frames.dtype == np.uint8 and media.frames.ndim == 4 and media.frames.shape[3] == 3


def write_excerpt(source: Path, dest: Path, video_codec: str | None, audio_codec: str) -> None:
    """Re-encode the first CLIP_SECONDS of source into dest (container chosen by suffix), downscaled to SMALL."""
    with av.open(str(source)) as inp, av.open(str(dest), "w") as out:
        audio_in = inp.streams.audio[0]
        audio_out = out.add_stream(audio_codec, rate=48_000, layout="stereo")
        video_in = inp.streams.video[0] if video_codec else None
        streams = [audio_in]
        if video_in is not None:
            options = ENCODER_OPTIONS.get(video_codec)
            video_out = out.add_stream(video_codec, rate=video_in.average_rate, options=options)
            video_out.width, video_out.height = SMALL
            video_out.pix_fmt = "yuv420p"
            streams.append(video_in)
        n_video = 0
        for packet in inp.demux(*streams):
            for frame in packet.decode():
                if frame.time >= CLIP_SECONDS:
                    continue
                if packet.stream.type == "audio":
                    frame.pts = None  # the encoder's own resampler renumbers samples for its frame size
                    out.mux(audio_out.encode(frame))
                else:
                    small = frame.reformat(*SMALL, format="yuv420p")
                    small.pts, small.time_base = n_video, 1 / video_in.average_rate
                    n_video += 1
                    out.mux(video_out.encode(small))
        out.mux(audio_out.encode(None))
        if video_in is not None:
            out.mux(video_out.encode(None))


def write_vfr(dest: Path, times: list[float]) -> None:
    """A video-only file whose frame i is shown at times[i] s and is uniformly grey with level GREY_STEP * (i + 1)."""
    with av.open(str(dest), "w") as out:
        stream = out.add_stream("mpeg4", rate=1000)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)  # ms: fine enough for irregular times
        for i, t in enumerate(times):
            grey = np.full((48, 64, 3), GREY_STEP * (i + 1), np.uint8)
            frame = av.VideoFrame.from_ndarray(grey, format="bgr24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_ravdess_clips(ravdess_clips: list[Path]) -> None:
    assert len(ravdess_clips) == 11
    for path in ravdess_clips:
        media = decode(path)
        check_media(media, path)
        assert media.path == str(path) and media.has_audio and media.has_video
        assert media.frames.shape[1:] == (720, 1280, 3)
        assert abs(len(media.frames) - 5.0 * media.duration) <= 2


def test_no_audio_clip(no_audio_clip: Path) -> None:
    media = decode(no_audio_clip)
    check_media(media, no_audio_clip)
    assert not media.has_audio and media.audio is None and media.has_video
    assert media.frames.shape[1:] == (720, 720, 3)
    assert abs(len(media.frames) - 5.0 * media.duration) <= 2


def test_fps_doubles_frames(ravdess_clips: list[Path]) -> None:
    five, ten = decode(ravdess_clips[0], fps=5), decode(ravdess_clips[0], fps=10)
    check_media(ten, ravdess_clips[0])
    assert abs(len(ten.frames) - 2 * len(five.frames)) <= 2
    np.testing.assert_array_equal(five.frame_times, ten.frame_times[::2][: len(five.frame_times)])


@pytest.mark.parametrize("fps", [0, -1.0])
def test_bad_fps(ravdess_clips: list[Path], fps: float) -> None:
    with pytest.raises(ValueError, match="fps"):
        decode(ravdess_clips[0], fps=fps)


def test_flac_is_audio_only(shared: Path) -> None:
    path = next((shared / "data/ravdess-speech-16k").glob("Actor_01/*.flac"))
    media = decode(path)
    check_media(media, path)
    assert media.has_audio and media.frames is None and media.frame_times is None and not media.has_video


def test_cover_art_is_not_video(shared: Path, tmp_path: Path) -> None:
    """An attached picture (album art) in a flac is a stream of type video, but not a recording of anyone."""
    source = next((shared / "data/ravdess-speech-16k").glob("Actor_01/*.flac"))
    dest = tmp_path / "cover.flac"
    with av.open(str(source)) as inp, av.open(str(dest), "w") as out:
        audio = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        cover = out.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24")
        out.mux(cover.encode(picture.reformat(format="yuvj420p")) + cover.encode(None))
        for frame in inp.decode(audio=0):
            frame.pts = None
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    media = decode(dest)
    check_media(media, dest)
    assert media.has_audio and not media.has_video


@pytest.mark.parametrize("suffix", sorted(CONTAINERS))
def test_other_containers(ravdess_clips: list[Path], tmp_path: Path, suffix: str) -> None:
    video_codec, audio_codec = CONTAINERS[suffix]
    dest = tmp_path / f"excerpt.{suffix}"
    write_excerpt(ravdess_clips[0], dest, video_codec, audio_codec)
    media = decode(dest)
    check_media(media, dest)
    # The excerpt's declared length exceeds CLIP_SECONDS only by encoder priming (AAC 1024 samples = 21 ms at
    # 48 kHz, which mkv and flv keep as a negative start instead of an edit list) or one frame's duration.
    assert abs(media.duration - CLIP_SECONDS) < TOLERANCE
    assert media.has_audio
    assert media.has_video == (video_codec is not None)
    if video_codec is not None:
        assert media.frames.shape == (10, SMALL[1], SMALL[0], 3)


def test_variable_frame_rate(tmp_path: Path) -> None:
    times = [0.0, 0.1, 0.15, 0.5, 0.9, 1.0, 1.7]
    dest = tmp_path / "vfr.mkv"
    write_vfr(dest, times)
    media = decode(dest, fps=5)
    check_media(media, dest)
    # Targets 0, 0.2, 0.4, ... s: 0 -> 0; 0.2 -> 0.5 (0.1 and 0.15 skipped); 0.6 -> 0.9; 1.0 -> 1.0; 1.2-1.6 -> 1.7.
    expected = [0, 3, 4, 5, 6]
    np.testing.assert_allclose(media.frame_times, [times[i] for i in expected], atol=1e-9)
    # Each kept frame is the source frame shown at that time: its grey level (shifted a little by lossy coding and
    # the limited-range YUV round trip) is nearest to that frame's.
    levels = GREY_STEP * np.arange(1, len(times) + 1)
    nearest = np.abs(media.frames.mean(axis=(1, 2, 3))[:, None] - levels).argmin(axis=1)
    assert nearest.tolist() == expected
    # Sampling faster than the frames arrive keeps every frame exactly once.
    np.testing.assert_allclose(decode(dest, fps=20).frame_times, times, atol=1e-9)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.mp4"
    with pytest.raises(MediaError, match=f"{re.escape(path.name)}: file not found"):
        decode(path)


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.mkdir()
    with pytest.raises(MediaError, match=f"{re.escape(path.name)}: not a regular file"):
        decode(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(MediaError, match=f"{re.escape(path.name)}: empty file"):
        decode(path)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video, just some notes\n" * 20)
    with pytest.raises(MediaError, match=f"{re.escape(path.name)}: not a readable media file"):
        decode(path)


def test_truncated_moov_at_end(ravdess_clips: list[Path], tmp_path: Path) -> None:
    """The RAVDESS clips keep their index (moov atom) at the end, so the first half cannot even be opened."""
    data = ravdess_clips[0].read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=f"{re.escape(path.name)}: not a readable media file"):
        decode(path)


def test_truncated_moov_at_start(ravdess_clips: list[Path], tmp_path: Path) -> None:
    """With the index first (faststart), half a file opens and decodes, so the missing half must be noticed."""
    whole = tmp_path / "faststart.mp4"
    with av.open(str(ravdess_clips[0])) as inp, av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        copies = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("audio", "video")}
        for packet in inp.demux(*inp.streams):
            if packet.dts is not None:  # the demuxer's final flush packets carry no data
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
    check_media(decode(whole), whole)
    data = whole.read_bytes()
    path = tmp_path / "half-faststart.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=rf"{re.escape(path.name)}: truncated: decoded [\d.]+ s of [\d.]+ s"):
        decode(path)


def write_portrait_copy(source: Path, dest: Path, rotation: int) -> None:
    """source's pixels turned a quarter the other way and stored with a display rotation that turns them back, as a
    phone stores a portrait video: rotation 90 (counter-clockwise) pairs with pixels turned clockwise."""
    import subprocess

    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    turned = dest.with_name("turned.mp4")
    transpose = {90: "transpose=clock", -90: "transpose=cclock"}[rotation]
    subprocess.run(
        [ffmpeg, "-y", "-loglevel", "error", "-i", str(source), "-vf", transpose, "-c:v", "libx264", "-crf", "18",
         "-c:a", "copy", str(turned)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [ffmpeg, "-y", "-loglevel", "error", "-display_rotation:v:0", str(rotation), "-i", str(turned), "-c", "copy",
         str(dest)],
        check=True,
    )  # fmt: skip


@pytest.mark.parametrize("rotation", [90, -90])
def test_a_portrait_phone_video_is_decoded_upright(ravdess_clips: list[Path], tmp_path: Path, rotation: int) -> None:
    from encoders.face_detection import FaceDetector, extract_faces

    dest = tmp_path / "portrait.mp4"
    write_portrait_copy(ravdess_clips[0], dest, rotation)
    with av.open(str(dest)) as container:
        assert next(container.decode(video=0)).rotation == rotation  # the stored pixels really are sideways
    original, portrait = decode(ravdess_clips[0]), decode(dest)
    assert portrait.frames.shape == original.frames.shape  # (n, 720, 1280, 3): turned back to landscape
    n = min(len(original.frames), len(portrait.frames))
    difference = np.abs(portrait.frames[:n].astype(np.int16) - original.frames[:n]).mean()
    assert difference < 6, "the frames are not the original picture"  # re-encoding alone: a few grey levels
    detector = FaceDetector()
    assert (
        extract_faces(portrait.frames, detector).present.mean()
        == extract_faces(original.frames, detector).present.mean()
    )


def write_damaged_copy(source: Path, dest: Path) -> None:
    """source with 10 KB in the middle overwritten by random bytes (seeded): a few packets no longer decode."""
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 10_000] = np.random.default_rng(0).bytes(10_000)
    dest.write_bytes(bytes(data))


def test_damaged_packets_are_skipped_and_reported(ravdess_clips: list[Path], tmp_path: Path) -> None:
    dest = tmp_path / "damaged.mp4"
    write_damaged_copy(ravdess_clips[0], dest)
    media, intact = decode(dest), decode(ravdess_clips[0])
    assert media.damaged and intact.damaged == ()
    assert all(0 < start < end < media.duration for start, end in media.damaged)
    assert sum(end - start for start, end in media.damaged) < 0.5
    # the rest decodes: all the audio (the damaged packets as silence, so later samples keep their time) and
    # nearly every sampled frame
    assert media.duration == intact.duration and abs(len(media.audio) - len(intact.audio)) < 0.01 * SAMPLE_RATE
    late = slice(-SAMPLE_RATE, None)  # the last second, after the damage: the same sound at the same time
    assert np.corrcoef(media.audio[late], intact.audio[late])[0, 1] > 0.99
    assert len(media.frames) >= len(intact.frames) - 2


def test_wrong_files_get_the_right_reason(tmp_path: Path) -> None:
    """A text file named .flac, a still image named .mp4, a symbolic link loop: each says what it is."""
    import cv2

    text = tmp_path / "notes.flac"
    text.write_text("hello world\nthis is text\n")
    picture = tmp_path / "picture.mp4"
    cv2.imwrite(str(tmp_path / "picture.png"), np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "picture.png").rename(picture)
    loop_a, loop_b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    for path, reason in ((text, "not a media file"), (picture, "not a recording"), (loop_a, "symbolic links")):
        with pytest.raises(MediaError, match=reason):
            decode(path)
