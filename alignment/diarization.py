"""Speaker diarization: who speaks when in a recording of one or a few people (an interview), as turns on its
timeline, and which speaker said each given segment.

Speech is found by Silero VAD (:mod:`encoders.vad`) unless the caller gives its mask; windows inside the stretches of
speech get speaker embeddings (:mod:`encoders.speakers`); agglomerative clustering on cosine distance groups them into
speakers, their number (one or two unless told more) estimated by a distance threshold unless given; each stretch of
speech is labelled from its nearest windows, and turns too short to be a real turn go to their neighbours. The
constants below were tuned on RAVDESS actors 01-10 only; benchmarks/speakers.py reports on actors 11-18.

Memory: besides the audio, the VAD mask and 192 floats per 0.4 s of speech (about 1.7 MB per hour); clustering
holds the pairwise distances of at most MAX_CLUSTERED windows (36 MB), the rest join the nearest group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encoders.speakers import SAMPLE_RATE, SpeakerEncoder, remove_nuisance
from encoders.vad import FRAME_SAMPLES, FRAME_SECONDS, HANGOVER_SECONDS, SpeechDetector, speech_stretches

# Cosine distance between two groups' mean voice prints (the nuisance directions of encoders.speakers removed) at or
# over which they are two people. Chosen with the number of those directions on recordings of RAVDESS actors 01-10
# by benchmarks/speaker_nuisance.py (results/speakers/nuisance.md): the speaker count was right on all same-sex and
# different-sex pairs and on 90% of one-voice recordings of all eight emotions, the hardest: one actor's angry and
# sad takes can still look like two people. diarize(speakers=2) when the count is known.
SPEAKER_THRESHOLD = 0.31
# A group with under this share of the speech windows (8%) is not a speaker of its own but strays of the others (a
# cough, a laugh, windows across a change of speaker). A guest who speaks under a twelfth of the time is not found.
MIN_SPEAKER_SHARE = 0.08
# The most speakers estimated when the caller does not say: an interview's two (issue #17); the threshold above was
# chosen for one or two. diarize(max_speakers=...) raises it; diarize(speakers=...) fixes the number.
MAX_SPEAKERS = 2
# Windows clustered at most (about 20 minutes of speech): their pairwise distances take n * n * 4 bytes (36 MB); the
# windows of longer recordings are clustered on an evenly spread sample and the rest join the nearest group's mean.
MAX_CLUSTERED = 3000
# Silence shorter than this (0.25 s) inside speech is a pause between words, not the end of a stretch of speech.
JOIN_GAP_SECONDS = 0.25
# Speech shorter than this (0.1 s, three VAD frames) is a click or a breath, not speech.
MIN_SPEECH_SECONDS = 0.1
# A turn shorter than this (0.8 s) between turns of other speakers is given to its longer neighbour: a window over a
# change of speaker or a stray label, not a turn; a spoken sentence lasts well over a second.
MIN_TURN_SECONDS = 0.8
# Turns of one speaker separated by silence shorter than this (0.5 s) are one turn: a breath, not a change of turn.
MERGE_GAP_SECONDS = 0.5
# Turns are widened by encoders.vad's hangover (0.2 s) on each side, never past the middle of the pause to the next
# turn: Silero starts speech about 60-100 ms late and misses soft word ends (on actors 01-10 it cut missed speech
# from 5.3% to 3.3% of the scored time, adding 0.2% false alarm).
TURN_PAD_SECONDS = HANGOVER_SECONDS
# A segment is its top speaker's when their turns cover at least this share (half) of it; a pause or a silence window
# that a turn only grazes (its widening, a last word) is no one's, and does not count in any speaker's summary.
MIN_SEGMENT_COVER = 0.5


@dataclass(frozen=True)
class Turn:
    """One speaker speaking from start to end (seconds from the recording's start); speaker "S1", "S2", ... in the
    order the speakers first speak."""

    start: float
    end: float
    speaker: str


def speech_spans(speech: np.ndarray) -> list[tuple[float, float]]:
    """(n_frames,) bool VAD frames (frame i spans [i, i + 1) * FRAME_SECONDS) -> stretches of speech (start, end)
    in seconds: pauses under JOIN_GAP_SECONDS are closed, stretches under MIN_SPEECH_SECONDS dropped."""
    spans = speech_stretches(speech, join_s=JOIN_GAP_SECONDS)
    return [(s, e) for s, e in spans if e - s >= MIN_SPEECH_SECONDS]


def _centred(embeddings: np.ndarray) -> np.ndarray:
    """The embeddings less their mean, L2-normalised: what all windows of a recording share (the room, the
    microphone, what every voice print has in common) goes, and what tells its speakers apart stays."""
    centred = embeddings - embeddings.mean(0)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def _split(centred: np.ndarray, k: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(centred)


def distinct(embeddings: np.ndarray, labels: np.ndarray, threshold: float = SPEAKER_THRESHOLD) -> bool:
    """Whether every group is a speaker: at least MIN_SPEAKER_SHARE of the windows, and its mean voice print at
    least SPEAKER_THRESHOLD (cosine distance) from every other group's."""
    groups = np.unique(labels)
    if np.bincount(labels).min() < MIN_SPEAKER_SHARE * len(labels):
        return False
    means = np.stack([embeddings[labels == k].mean(0) for k in groups])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    distances = 1 - means @ means.T
    return bool(distances[np.triu_indices(len(groups), 1)].min() >= threshold)


def cluster(
    embeddings: np.ndarray,
    speakers: int | None = None,
    *,
    max_speakers: int = MAX_SPEAKERS,
    threshold: float = SPEAKER_THRESHOLD,
) -> np.ndarray:
    """(n, EMBEDDING) L2-normalised window embeddings -> (n,) int speaker of each window, 0 .. k - 1.

    The windows are centred on the recording's mean and clustered (average linkage, cosine distance) into
    `speakers` groups when it is given. Otherwise into 2, 3, ... up to max_speakers groups while every group is still
    a speaker of its own (see distinct: the groups' mean voice prints, not centred, far enough apart).
    """
    n = len(embeddings)
    if speakers is not None and speakers < 1:
        raise ValueError(f"speakers must be at least 1, got {speakers}")
    if n < 2 or speakers == 1:
        return np.zeros(n, int)
    centred = _centred(embeddings)
    sample = np.unique(np.linspace(0, n - 1, min(n, MAX_CLUSTERED)).round().astype(int))  # all of them, up to 3000
    if speakers is not None:
        return _assign(centred, sample, _split(centred[sample], min(speakers, len(sample))))
    labels = np.zeros(len(sample), int)
    for k in range(2, min(max_speakers, len(sample)) + 1):
        candidate = _split(centred[sample], k)
        if not distinct(embeddings[sample], candidate, threshold):
            break
        labels = candidate
    return _assign(centred, sample, labels)


def _assign(centred: np.ndarray, sample: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels of all windows: the sample's own, and for the others the group whose mean is nearest."""
    if len(sample) == len(centred):
        return labels
    means = np.stack([centred[sample][labels == k].mean(0) for k in range(labels.max() + 1)])
    out = (centred @ means.T).argmax(1)
    out[sample] = labels
    return out


def _label_spans(
    spans: list[tuple[float, float]], starts: np.ndarray, ends: np.ndarray, labels: np.ndarray
) -> list[list]:
    """Pieces [start, end, label] of the spans: each moment takes the label of the window whose centre is nearest
    among the span's own windows (or, for a span with none, the nearest window anywhere)."""
    centres = (starts + ends) / 2
    pieces: list[list] = []
    for start, end in spans:
        inside = np.flatnonzero((starts >= start - 1e-6) & (ends <= end + 1e-6))
        if len(inside) == 0:
            nearest = np.abs(centres - (start + end) / 2).argmin()
            pieces.append([start, end, int(labels[nearest])])
            continue
        order = inside[np.argsort(centres[inside])]
        cut = start
        for a, b in zip(order[:-1], order[1:]):
            if labels[a] != labels[b]:
                middle = (centres[a] + centres[b]) / 2
                pieces.append([cut, middle, int(labels[a])])
                cut = middle
        pieces.append([cut, end, int(labels[order[-1]])])
    return pieces


def _smooth(pieces: list[list]) -> list[list]:
    """Turns shorter than MIN_TURN_SECONDS whose neighbours are both other speakers go to the longer neighbour,
    shortest first; then pieces of one speaker under MERGE_GAP_SECONDS apart join."""
    runs = _join(pieces)
    for _ in range(len(runs)):  # each pass settles one stray; bounded, though one pass rarely unsettles another
        strays = [
            i
            for i, (start, end, label) in enumerate(runs)
            if end - start < MIN_TURN_SECONDS
            and len(runs) > 1
            and all(runs[j][2] != label for j in (i - 1, i + 1) if 0 <= j < len(runs))
        ]
        if not strays:
            break
        i = min(strays, key=lambda k: runs[k][1] - runs[k][0])
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(runs)]
        runs[i][2] = runs[max(neighbours, key=lambda k: runs[k][1] - runs[k][0])][2]
        runs = _join(runs)
    return runs


def _join(pieces: list[list]) -> list[list]:
    runs: list[list] = []
    for start, end, label in pieces:
        if runs and runs[-1][2] == label and start - runs[-1][1] < MERGE_GAP_SECONDS:
            runs[-1][1] = end
        else:
            runs.append([start, end, label])
    return runs


def _widen(runs: list[list], seconds: float) -> list[list]:
    """Each turn widened by TURN_PAD_SECONDS on each side, within the recording and never past the middle of the
    pause to its neighbour."""
    out = [run[:] for run in runs]
    for i, (start, end, _) in enumerate(runs):
        low = (runs[i - 1][1] + start) / 2 if i > 0 else 0.0
        high = (end + runs[i + 1][0]) / 2 if i + 1 < len(runs) else seconds
        out[i][0] = max(start - TURN_PAD_SECONDS, min(low, start))
        out[i][1] = min(end + TURN_PAD_SECONDS, max(high, end))
    return out


def _named(runs: list[list]) -> list[Turn]:
    names: dict[int, str] = {}
    for _, _, label in runs:
        names.setdefault(label, f"S{len(names) + 1}")
    return [Turn(float(s), float(e), names[label]) for s, e, label in runs]


def diarize(
    audio: np.ndarray,
    speech: np.ndarray | None = None,
    *,
    speakers: int | None = None,
    max_speakers: int = MAX_SPEAKERS,
    encoder: SpeakerEncoder | None = None,
    detector: SpeechDetector | None = None,
) -> list[Turn]:
    """Who speaks when: (samples,) float32 mono 16 kHz -> turns in time order, no two overlapping.

    speech: (len(audio) // FRAME_SAMPLES,) bool VAD frames, as encoders.vad.SpeechDetector gives them for the whole
    recording; found here when None. speakers: how many people speak, when known; otherwise estimated, from 1 to
    max_speakers. encoder and detector: models already loaded, to reuse across recordings.
    Silence is in no turn; where two people speak at once, the turn is one of theirs.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (samples,), got shape {audio.shape}")
    if max_speakers < 1:
        raise ValueError(f"max_speakers must be at least 1, got {max_speakers}")
    seconds = len(audio) / SAMPLE_RATE
    if speech is None:
        detector = detector or SpeechDetector()
        detector.reset()
        speech = detector(audio)
    elif abs(len(speech) - len(audio) // FRAME_SAMPLES) > 1:
        raise ValueError(
            f"speech has {len(speech)} frames, but {seconds:.2f} s of audio has "
            f"{len(audio) // FRAME_SAMPLES} VAD frames of {FRAME_SECONDS * 1000:.0f} ms"
        )
    spans = speech_spans(speech)
    if not spans:
        return []
    encoder = encoder or SpeakerEncoder()
    embeddings, starts, ends = encoder.windows(audio, spans)
    return diarize_prints(spans, embeddings, starts, ends, seconds, speakers=speakers, max_speakers=max_speakers)


def diarize_prints(
    spans: list[tuple[float, float]],
    embeddings: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    seconds: float,
    *,
    speakers: int | None = None,
    max_speakers: int = MAX_SPEAKERS,
) -> list[Turn]:
    """Who speaks when, from a recording's speech spans and its windows' raw voice prints (encoders.speakers:
    (n, EMBEDDING) embeddings, (n,) start and end seconds), however they were gathered (a whole recording at once, or
    chunk by chunk as fusion.predict streams it). seconds: the recording's length."""
    if not spans:
        return []
    if len(embeddings) == 0:  # speech too short for any window: one speaker
        return _named(_widen(_join([[s, e, 0] for s, e in spans]), seconds))
    labels = cluster(remove_nuisance(embeddings), speakers, max_speakers=max_speakers)
    return turns(spans, starts, ends, labels, seconds)


def turns(
    spans: list[tuple[float, float]], starts: np.ndarray, ends: np.ndarray, labels: np.ndarray, seconds: float
) -> list[Turn]:
    """Turns of a recording of `seconds` from its speech spans and its windows' (start, end, speaker): each moment
    labelled from its nearest window, stray short turns given to their neighbours, turns widened."""
    return _named(_widen(_smooth(_label_spans(spans, starts, ends, labels)), seconds))


def label_segments(
    turns: list[Turn], segments: list[tuple[float, float]], spoken: list[bool] | None = None
) -> list[str | None]:
    """The speaker whose turns cover most of each segment (start, end) in seconds. A spoken segment (an utterance:
    spoken[i] True) is its main speaker's whenever a turn overlaps it, however short the turns inside it are (the
    voice activity trims them within Whisper's segment); another segment only when its speaker covers at least
    MIN_SEGMENT_COVER of it; else None (mostly silence)."""
    labels: list[str | None] = []
    spoken = spoken or [False] * len(segments)
    for (start, end), said in zip(segments, spoken):
        cover: dict[str, float] = {}
        for turn in turns:
            overlap = min(end, turn.end) - max(start, turn.start)
            if overlap > 0:
                cover[turn.speaker] = cover.get(turn.speaker, 0.0) + overlap
        top = max(cover, key=cover.get) if cover else None
        enough = top is not None and (said or cover[top] >= MIN_SEGMENT_COVER * (end - start))
        labels.append(top if enough else None)
    return labels
