"""How many words survive Whisper's window filter when a speaker repeats himself: the speed benchmark's long input
(the RAVDESS clips, each saying one six-word sentence, copied one after another), whose true word count is known.

    python -m benchmarks.repeated_speech --clips ../shared/data/av-clips/ravdess --minutes 10 \
        --out benchmarks/results/repeated_speech.md

Whisper decodes the audio once (in 30 s windows, each on its own, as encoders.asr.Transcriber runs it); then each
rule below keeps or drops every segment (a sentence of a window; a window's segments share its average token
log-probability and gzip compression ratio), and the words kept are counted against the truth (6 words per clip
copied in).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.child import describe_machine
from benchmarks.long_input import concatenate
from benchmarks.long_input import copies as copies_of
from encoders.asr import COMPRESSION_RATIO_THRESHOLD, LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD, Transcriber, keep_window
from fusion.media.decoding import decode

WORDS_PER_CLIP = 6  # "Kids are talking by the door" / "Dogs are sitting by the door" (RAVDESS statements 01, 02)

RULES = {
    "drop if log-probability < -1 or compression > 2.4 (the earlier rule)": lambda lp, cr: (
        not (lp < LOGPROB_THRESHOLD or cr > COMPRESSION_RATIO_THRESHOLD)
    ),
    "drop if log-probability < -1 only": lambda lp, cr: lp >= LOGPROB_THRESHOLD,
    "drop if log-probability < -1, or compression > 2.4 and log-probability < -0.5 (encoders.asr.keep_window)": (
        keep_window
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default="../shared/data/av-clips/ravdess")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default="benchmarks/results/repeated_speech.md")
    args = parser.parse_args()
    started = time.perf_counter()
    clips = sorted(Path(args.clips).glob("*.mp4"))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "long.mp4"
        duration = concatenate(clips, path, seconds=args.minutes * 60)
        audio = decode(path).audio
    copies = copies_of(clips, args.minutes * 60)
    transcriber = Transcriber()
    result = transcriber.model.transcribe(
        audio,
        verbose=None,
        temperature=0.0,
        condition_on_previous_text=False,
        word_timestamps=True,
        no_speech_threshold=NO_SPEECH_THRESHOLD,
        logprob_threshold=LOGPROB_THRESHOLD,
    )
    windows = [
        (s["avg_logprob"], s["compression_ratio"], len([w for w in s["words"] if w["word"].strip()]))
        for s in result["segments"]
    ]
    truth = WORDS_PER_CLIP * copies
    lines = [
        "# Repeated speech: words kept by each window rule",
        "",
        f"Command: `python -m benchmarks.repeated_speech {' '.join(sys.argv[1:])}`  ",
        f"Machine: {describe_machine()}; {(time.perf_counter() - started) / 60:.1f} min  ",
        f"Input: {len(clips)} RAVDESS clips copied {copies} times in turn, {duration / 60:.1f} min; "
        f"true word count {truth} ({WORDS_PER_CLIP} per copy). Whisper segments: {len(windows)}; in windows with "
        f"compression ratio above {COMPRESSION_RATIO_THRESHOLD}: "
        f"{sum(cr > COMPRESSION_RATIO_THRESHOLD for _, cr, _ in windows)}.",
        "",
        "| rule | segments kept | words kept | words / true words |",
        "|---|---|---|---|",
    ]
    for name, keep in RULES.items():
        kept = [(lp, cr, n) for lp, cr, n in windows if keep(lp, cr)]
        words = sum(n for _, _, n in kept)
        lines.append(f"| {name} | {len(kept)} of {len(windows)} | {words} | {words / truth:.2f} |")
    lines += ["", "Segments (their window's average log-probability and compression ratio, words):", ""]
    lines += [", ".join(f"({lp:.2f}, {cr:.2f}, {n})" for lp, cr, n in windows)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
