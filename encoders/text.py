"""Text: Whisper transcribes the speech with word timestamps, and a BERT model embeds each word in its utterance.

:class:`Transcriber` turns 16 kHz mono audio into :class:`Utterance` s of timed :class:`Word` s; :class:`WordEncoder`
turns those utterances into one vector per word, in the same order, so every word row has a time on the timeline.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import whisper
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from encoders import SAMPLE_RATE
from encoders.loading import (
    DEFAULT_TEXT_MODEL,
    DEFAULT_WHISPER_MODEL,
    TEXT_ENV,
    WHISPER_ENV,
    ModelNotFoundError,
    choose_model,
    looks_like_path,
    quiet_loading,
)
from encoders.runtime import pick_device

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


def keep_window(avg_logprob: float, compression_ratio: float) -> bool:
    """Whether a decoded Whisper window's text is kept: not invented in the quiet (LOGPROB_THRESHOLD) and not a
    decoding loop (repetitive, COMPRESSION_RATIO_THRESHOLD, and unsure, REPEAT_LOGPROB_THRESHOLD)."""
    if avg_logprob < LOGPROB_THRESHOLD:
        return False
    return compression_ratio <= COMPRESSION_RATIO_THRESHOLD or avg_logprob >= REPEAT_LOGPROB_THRESHOLD


BATCH_SIZE = 16  # sequences (utterances or chunks of them) per BERT forward pass


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


class Transcriber:
    """Whisper speech recognition with word timestamps. Loads the model once; call transcribe() many times.

    The model is the argument, else $FUSION_WHISPER_MODEL, else "tiny.en": a checkpoint file, or a name that
    openai-whisper downloads into ~/.cache/whisper.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | torch.device | None = None):
        self.name: str = choose_model(model, env_var=WHISPER_ENV, default=DEFAULT_WHISPER_MODEL)
        self.device = pick_device(device)
        self.model = _load_whisper(self.name, self.device)

    def transcribe(self, audio: np.ndarray) -> list[Utterance]:
        """(samples,) float32 mono 16 kHz -> utterances with word timestamps, in time order; [] when there is no speech.

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
        utterances = []
        previous_start = 0.0
        for segment in result["segments"]:
            # A window Whisper would have re-decoded at a higher temperature (see LOGPROB_THRESHOLD).
            if not keep_window(segment["avg_logprob"], segment["compression_ratio"]):
                continue
            raw = [word for word in segment["words"] if word["word"].strip()]
            words = []
            for word in raw:
                # Whisper sees the audio padded to 30 s and times words by attention alignment, so a time can
                # fall past the end or, across windows, before the previous word: clip and keep them ordered.
                start = min(max(float(word["start"]), previous_start), duration)
                end = min(max(float(word["end"]), start), duration)
                words.append(Word(word["word"].strip(), start, end))
                previous_start = start
            if words:
                text = "".join(word["word"] for word in raw).strip()
                utterances.append(Utterance(text, words[0].start, max(w.end for w in words), tuple(words)))
        return utterances


def _loudest_frame_dbfs(audio: np.ndarray) -> float:
    """(samples,) 16 kHz, at least one frame long -> RMS of the loudest 25 ms frame in dBFS (full scale 1.0)."""
    frame = round(GATE_FRAME_SECONDS * SAMPLE_RATE)
    frames = audio[: len(audio) // frame * frame].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1)).max()
    return float(20 * np.log10(max(rms, 1e-10)))  # digital silence: -200 dBFS rather than -inf


def _load_whisper(name: str, device: torch.device) -> whisper.Whisper:
    def not_found(reason: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            what="Whisper model", requested=name, env_var=WHISPER_ENV, argument="whisper_model", reason=reason
        )

    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise not_found("no such file" if not path.exists() else "not a file")
        try:
            return whisper.load_model(str(path), device=device)
        except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError, ValueError) as err:
            # torch.load's errors on a file that is not a Whisper checkpoint (damaged, truncated, another model)
            raise not_found(f"not a Whisper checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    if name not in whisper.available_models():
        raise not_found(f"not a file and not a Whisper model name ({', '.join(whisper.available_models())})")
    try:
        return whisper.load_model(name, device=device)
    except OSError as err:  # offline: urllib's URLError; also an unwritable ~/.cache/whisper
        raise not_found(f"download failed: {err}") from err


class WordEncoder:
    """A BERT model over the transcript: one embedding per word, its word pieces mean-pooled.

    The model is the argument, else $FUSION_TEXT_MODEL, else "sentence-transformers/all-MiniLM-L6-v2": a local
    Hugging Face folder, or a hub name that transformers downloads. It runs in float32, frozen.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | torch.device | None = None):
        self.name: str = choose_model(model, env_var=TEXT_ENV, default=DEFAULT_TEXT_MODEL)
        self.device = pick_device(device)
        self.tokenizer, self.model = _load_bert(self.name)
        if not self.tokenizer.is_fast:
            raise ValueError(f"text model '{self.name}': pooling word pieces needs a fast tokenizer (word_ids)")
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim: int = self.model.config.hidden_size
        # Tokens per sequence, and word pieces once [CLS] and [SEP] are added.
        self.max_length: int = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        self.max_pieces: int = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)

    @torch.inference_mode()
    def encode(self, utterances: Sequence[Utterance]) -> torch.Tensor:
        """-> (n_words, dim) float32 on CPU, one row per word of all utterances in order; (0, dim) without words.

        Each utterance is its own sequence (split into chunks of whole words when it has more pieces than the model
        takes; padding is masked), so a word's embedding depends on its utterance, not on the others.
        """
        sequences = [
            chunk
            for utterance in utterances
            if utterance.words
            for chunk in self._chunks([word.text for word in utterance.words])
        ]
        rows = [torch.zeros(0, self.dim)]
        for first in range(0, len(sequences), BATCH_SIZE):
            batch = sequences[first : first + BATCH_SIZE]
            encoding = self.tokenizer(
                batch,
                is_split_into_words=True,
                padding=True,
                truncation=True,  # cuts only a single word longer than max_pieces: _chunks fits the rest
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**encoding.to(self.device)).last_hidden_state.cpu()  # (batch, pieces, dim)
            for i, words in enumerate(batch):
                word_ids = torch.tensor([-1 if w is None else w for w in encoding.word_ids(i)])
                is_piece = word_ids >= 0  # not [CLS], [SEP] or padding
                sums = torch.zeros(len(words), self.dim).index_add_(0, word_ids[is_piece], hidden[i][is_piece])
                counts = torch.bincount(word_ids[is_piece], minlength=len(words))
                rows.append(sums / counts[:, None])
        return torch.cat(rows)

    def _chunks(self, words: list[str]) -> list[list[str]]:
        """An utterance's words (at least one) -> runs of consecutive words of at most max_pieces word pieces each.

        A word the tokenizer turns into no pieces at all (empty, or only characters BERT's normaliser deletes,
        such as zero-width spaces or control characters) is replaced by the unknown token, so it still gets a
        row: the contextual embedding of [UNK] at its place in the utterance.
        """
        chunks: list[list[str]] = []
        used = self.max_pieces  # forces a new chunk for the first word
        for word, pieces in zip(words, self.tokenizer(words, add_special_tokens=False)["input_ids"]):
            if not pieces:
                word, pieces = self.tokenizer.unk_token, [self.tokenizer.unk_token_id]
            if used + len(pieces) > self.max_pieces:
                chunks.append([])
                used = 0
            chunks[-1].append(word)
            used += len(pieces)
        return chunks


def _load_bert(name: str) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    def not_found(reason: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            what="Text model", requested=name, env_var=TEXT_ENV, argument="text_model", reason=reason
        )

    source = name
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise not_found("no such directory" if not path.exists() else "not a directory")
        source = str(path)
    try:
        # The shared weights are stored in float16; the encoder runs in float32 on every device.
        with quiet_loading():
            return AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source, dtype=torch.float32)
    except OSError as err:  # offline or unknown hub name, or a folder without the model's files
        raise not_found(" ".join(str(err).split()).rstrip(".")) from err  # one line: the message adds its own stop
