"""Long recordings in bounded memory: chunked reading, the decoding process, and chunked prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.long_input import concatenate, copies
from encoders import SAMPLE_RATE
from encoders.face_detection import FaceDetector
from encoders.vad import SpeechDetector
from fusion.errors import MediaError
from fusion.media import streaming
from fusion.media.decoding import decode
from fusion.media.streaming import CUT_SEARCH_S, DecodeWorker, read_chunks


@pytest.fixture(scope="module")
def one_minute(ravdess_clips, tmp_path_factory):
    """A real 1-minute recording: the shared clips copied one after another (no re-encoding)."""
    path = tmp_path_factory.mktemp("long") / "one-minute.mp4"
    concatenate(ravdess_clips, path, seconds=60)
    return path


def test_chunks_partition_the_recording_and_keep_every_sample_and_frame(one_minute):
    whole = decode(one_minute)
    chunks = list(read_chunks(one_minute, fps=5.0, detector=FaceDetector(), chunk_s=20.0))
    assert len(chunks) >= 3
    assert chunks[0].start == 0.0
    for before, after in zip(chunks, chunks[1:]):
        assert after.start == pytest.approx(before.start + before.duration)
    assert chunks[-1].start + chunks[-1].duration == pytest.approx(whole.duration)
    # Each cut is at the quietest moment in the CUT_SEARCH_S seconds before the chunk's nominal end.
    for chunk in chunks[:-1]:
        assert 20.0 - CUT_SEARCH_S <= chunk.duration <= 20.0
        assert len(chunk.audio) == pytest.approx(chunk.duration * SAMPLE_RATE, abs=1)
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), whole.audio)
    np.testing.assert_array_equal(np.concatenate([c.frame_times for c in chunks]), whole.frame_times)
    assert sum(len(c.faces) for c in chunks) == len(whole.frames)
    for chunk in chunks:
        assert ((chunk.frame_times >= chunk.start) & (chunk.frame_times < chunk.start + chunk.duration)).all()


def test_chunks_double_from_the_first_chunk_up_to_chunk_s(one_minute, monkeypatch):
    monkeypatch.setattr(streaming, "FIRST_CHUNK_S", 10.0)
    durations = [c.duration for c in read_chunks(one_minute, fps=5.0, detector=FaceDetector(), chunk_s=16.0)]
    # nominal lengths 10, 16 (twice 10, capped at chunk_s), 16, ...; each cut up to CUT_SEARCH_S early
    assert 10.0 - CUT_SEARCH_S <= durations[0] <= 10.0
    assert all(16.0 - CUT_SEARCH_S <= d <= 16.0 for d in durations[1:-1]) and len(durations) >= 4


def test_decode_worker_gives_the_chunks_read_chunks_gives(one_minute):
    detector = FaceDetector()
    inline = list(read_chunks(one_minute, fps=5.0, detector=detector, chunk_s=20.0, vad=SpeechDetector()))
    worker = DecodeWorker(fps=5.0, face_model=detector.model)
    try:
        timings = {}
        remote = list(worker.chunks(one_minute, chunk_s=20.0, timings=timings))
    finally:
        worker.close()
    assert len(remote) == len(inline)
    for ours, theirs in zip(remote, inline):
        assert (ours.start, ours.duration) == (theirs.start, theirs.duration)
        np.testing.assert_array_equal(ours.audio, theirs.audio)
        np.testing.assert_array_equal(ours.frame_times, theirs.frame_times)
        for a, b in zip(ours.faces, theirs.faces):
            np.testing.assert_array_equal(a.crops, b.crops)
        np.testing.assert_array_equal(ours.speech, theirs.speech)  # voice activity, per 32 ms
        assert len(ours.speech) == len(ours.audio) // 512 and ours.speech.any()
    assert timings["decode"] > 0 and timings["face_detection"] > 0 and timings["vad"] > 0


def test_decode_worker_raises_a_files_error_and_serves_the_next_file(one_minute, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    worker = DecodeWorker(fps=5.0, face_model=FaceDetector().model)
    try:
        with pytest.raises(MediaError, match="empty file") as raised:
            list(worker.chunks(empty))
        assert raised.value.path == str(empty)
        assert any("in the decoding process" in note for note in raised.value.__notes__)
        assert sum(c.duration for c in worker.chunks(one_minute, chunk_s=20.0)) == pytest.approx(60, abs=2)
    finally:
        worker.close()


def test_decode_worker_is_replaced_when_a_consumer_stops_part_way(one_minute):
    worker = DecodeWorker(fps=5.0, face_model=FaceDetector().model)
    try:
        chunks = worker.chunks(one_minute, chunk_s=20.0)
        next(chunks)
        chunks.close()  # stops part-way: the worker, which would decode on to the end, is stopped
        assert worker._process is None
        assert len(list(worker.chunks(one_minute, chunk_s=20.0))) >= 3
    finally:
        worker.close()


def test_files_asked_for_ahead_are_served_in_turn_and_a_file_out_of_turn_restarts_the_worker(one_minute, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    worker = DecodeWorker(fps=5.0, face_model=FaceDetector().model)
    try:
        first = [c.duration for c in worker.chunks(one_minute, chunk_s=20.0)]
        worker.request(empty)  # asked for ahead, in order: a broken file, then the recording
        worker.request(one_minute, chunk_s=20.0)
        process = worker._process
        with pytest.raises(MediaError, match="empty file"):
            list(worker.chunks(empty))
        assert [c.duration for c in worker.chunks(one_minute, chunk_s=20.0)] == first
        assert worker._process is process  # both read from the process that had them decoded
        worker.request(empty)  # asked for, then not read: another file's reader starts afresh
        assert [c.duration for c in worker.chunks(one_minute, chunk_s=20.0)] == first
        assert worker._process is not process and not worker._requested
    finally:
        worker.close()


def test_chunked_prediction_matches_the_whole_recording_in_structure(one_minute, ravdess_clips):
    from fusion.serving.predictor import Predictor

    whole = Predictor().predict(one_minute)
    chunked = Predictor(chunk_s=20.0).predict(one_minute)
    for result in (whole, chunked):
        timeline = result.timeline
        assert timeline.start.iloc[0] == 0.0 and timeline.end.iloc[-1] == pytest.approx(result.duration, abs=1e-3)
        np.testing.assert_allclose(timeline.start.values[1:], timeline.end.values[:-1])
        assert (timeline.label != "").all()
        np.testing.assert_allclose(timeline[list(result.labels)].sum(axis=1), 1.0, atol=1e-5)
    assert chunked.summary.modalities == whole.summary.modalities == ("audio", "text", "video")
    # No words are lost whether Whisper saw the minute whole or in chunks cut at quiet moments: each clip copied in
    # says one six-word sentence. tiny.en repeats the sentence once too often in some confident windows (whole
    # minute: 132 words for 108 said, in 20 s chunks 108), hence the upper bound's slack; on another machine it
    # merged five repeats of one window into three (20 s chunks: 102 words for 114 said; whole: 120), hence the
    # lower bound's: what chunking would lose is a whole chunk's words, a third of them.
    said = 6 * copies(ravdess_clips, 60.0)
    for result in (whole, chunked):
        words = " ".join(t.text for t in result.timeline.itertuples() if t.text).split()
        assert 0.85 * said <= len(words) <= 1.3 * said, (len(words), said)


def test_decode_worker_that_dies_gives_a_clear_error_and_is_restarted(one_minute):
    worker = DecodeWorker(fps=5.0, face_model=FaceDetector().model)
    try:
        chunks = worker.chunks(one_minute, chunk_s=20.0)
        next(chunks)
        worker._process.kill()  # as the kernel's out-of-memory killer would
        with pytest.raises(RuntimeError, match="decoding process .* stopped unexpectedly"):
            list(chunks)
        assert len(list(worker.chunks(one_minute, chunk_s=20.0))) >= 3
    finally:
        worker.close()


def test_a_file_decoded_ahead_gives_the_prediction_it_gives_otherwise(one_minute, ravdess_clips):
    from fusion.serving.predictor import Predictor

    # asked for while the models load: the one-minute recording (longer than a file read in this process)
    predictor = Predictor(prefetch=one_minute)
    assert predictor.extractor._decode_worker._requested
    ahead = predictor.predict(one_minute).timeline
    predictor.prefetch(ravdess_clips[0])  # the decoding process runs now: a short file is decoded there too
    assert predictor.extractor._decode_worker._requested
    clip_ahead = predictor.predict(ravdess_clips[0]).timeline
    assert not predictor.extractor._decode_worker._requested
    pd.testing.assert_frame_equal(predictor.predict(one_minute).timeline, ahead)
    pd.testing.assert_frame_equal(predictor.predict(ravdess_clips[0]).timeline, clip_ahead)
    predictor.extractor.close()
