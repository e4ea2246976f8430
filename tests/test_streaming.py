"""Long recordings in bounded memory: chunked reading, the background decoder, and chunked prediction."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.long_input import concatenate
from encoders.face import FaceDetector
from fusion.media import AUDIO_SAMPLE_RATE, decode
from fusion.streaming import CUT_SEARCH_S, in_background, read_chunks


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
        assert len(chunk.audio) == pytest.approx(chunk.duration * AUDIO_SAMPLE_RATE, abs=1)
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), whole.audio)
    np.testing.assert_array_equal(np.concatenate([c.frame_times for c in chunks]), whole.frame_times)
    assert sum(len(c.faces) for c in chunks) == len(whole.frames)
    for chunk in chunks:
        assert ((chunk.frame_times >= chunk.start) & (chunk.frame_times < chunk.start + chunk.duration)).all()


def test_background_iterator_hands_over_items_and_errors():
    assert list(in_background(iter(range(5)))) == [0, 1, 2, 3, 4]

    def failing():
        yield 1
        raise OSError("disk gone")

    items = in_background(failing())
    assert next(items) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(items)


def test_background_iterator_stops_its_producer_when_the_consumer_stops():
    produced = []

    def endless():
        for i in range(10_000):
            produced.append(i)
            yield i

    items = in_background(endless(), ahead=1)
    assert next(items) == 0
    items.close()  # the consumer stops: the producer must not run on to the end
    assert len(produced) <= 3


def test_chunked_prediction_matches_the_whole_recording_in_structure(one_minute):
    from fusion.predictor import Predictor

    whole = Predictor().predict(one_minute)
    chunked = Predictor(chunk_s=20.0).predict(one_minute)
    for result in (whole, chunked):
        timeline = result.timeline
        assert timeline.start.iloc[0] == 0.0 and timeline.end.iloc[-1] == pytest.approx(result.duration, abs=1e-3)
        np.testing.assert_allclose(timeline.start.values[1:], timeline.end.values[:-1])
        assert (timeline.label != "").all()
        np.testing.assert_allclose(timeline[list(result.labels)].sum(axis=1), 1.0, atol=1e-5)
    assert chunked.summary["modalities"] == whole.summary["modalities"] == ["audio", "text", "video"]
    # The same words come out whether Whisper saw the minute whole or in chunks cut at quiet moments.
    words = [" ".join(t.text for t in r.timeline.itertuples() if t.text).split() for r in (whole, chunked)]
    assert abs(len(words[0]) - len(words[1])) <= 0.1 * len(words[0])
