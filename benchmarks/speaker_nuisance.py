"""Fit the speaker encoder's nuisance directions (encoders/speaker_nuisance.safetensors) and choose their number and
the two-speaker threshold of alignment.diarization, on speakers the reported diarization figures never use.

    python -m benchmarks.speaker_nuisance --out benchmarks/results/speakers/nuisance.md

Directions: the top eigenvectors of the within-speaker covariance of window voice prints (encoders.speakers) of
every take of RAVDESS actors 01-10 and of NEMO_TAKES seeded takes of each of the 9 nEMO speakers, each take trimmed
to its speech as benchmarks/speakers.py trims it. For each candidate number k (0: no projection), the diarizer
runs on the tuning recordings of benchmarks/speakers.py (actors 01-10, seed 1) with the speaker count estimated;
the threshold is the one that gets the count right on the most of them (ties: the lowest same-sex DER), and the
k kept is the one with the lowest DER over all tuning recordings. Actors 11-18 are never read here.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from alignment.diarization import cluster, distinct, speech_spans, turns
from benchmarks.child import describe_machine, write_markdown
from benchmarks.speakers import der, recordings, takes, trimmed
from encoders.speakers import NUISANCE_FILE, SAMPLE_RATE, SpeakerEncoder, remove_nuisance
from encoders.vad import SpeechDetector
from fusion.storage import save_weights

NEMO_TAKES = 100  # takes per nEMO speaker (of about 500): enough to estimate how one voice varies
CANDIDATES = (0, 2, 5, 10, 15, 20)  # numbers of directions tried
TUNING_ACTORS = range(1, 11)
KINDS = ("same-sex", "different-sex", "one speaker")


def take_prints(encoder: SpeakerEncoder, ravdess: Path, nemo: Path) -> list[tuple[str, np.ndarray]]:
    """(speaker, (n_windows, EMBEDDING) voice prints) of every take used for the directions."""
    files = [(f"ravdess:{a:02d}", p) for a in TUNING_ACTORS for p in takes(ravdess, a)]
    by_speaker: dict[str, list[Path]] = {}
    for path in sorted(nemo.glob("*.opus")):
        by_speaker.setdefault(path.name.split("_")[0], []).append(path)
    rng = np.random.default_rng(0)
    for speaker, paths in by_speaker.items():
        files += [(f"nemo:{speaker}", paths[i]) for i in rng.permutation(len(paths))[:NEMO_TAKES]]
    out = []
    for speaker, path in files:
        audio = trimmed(path)
        if audio is not None:
            prints, _, _ = encoder.windows(audio, [(0.0, len(audio) / SAMPLE_RATE)])
            if len(prints):
                out.append((speaker, prints))
    return out


def directions(prints: list[tuple[str, np.ndarray]], k: int) -> np.ndarray:
    """(EMBEDDING, k) top eigenvectors of the within-speaker covariance of the window voice prints."""
    speakers = sorted({s for s, _ in prints})
    centred = []
    for speaker in speakers:
        windows = np.concatenate([p for s, p in prints if s == speaker])
        centred.append(windows - windows.mean(0))
    x = np.concatenate(centred).astype(np.float64)
    _, vectors = np.linalg.eigh(x.T @ x / len(x))
    return vectors[:, ::-1][:, :k].astype(np.float32)  # eigh sorts ascending


def prepare(items, encoder: SpeakerEncoder, detector: SpeechDetector) -> list[dict]:
    """Each recording's speech spans and raw window voice prints, computed once for every candidate."""
    out = []
    for item in items:
        detector.reset()
        spans = speech_spans(detector(item.audio))
        prints, starts, ends = encoder.windows(item.audio, spans)
        out.append({"item": item, "spans": spans, "prints": prints, "starts": starts, "ends": ends})
    return out


def outcomes(prepared: list[dict], v: np.ndarray) -> list[dict]:
    """Per recording, with the voice prints projected by v: the two-group split, and the errors of the diarization
    if the split is kept (two speakers) or refused (one), so that thresholds are tried without clustering again."""
    out = []
    for r in prepared:
        item, seconds = r["item"], len(r["item"].audio) / SAMPLE_RATE
        projected = remove_nuisance(r["prints"], v)
        two = cluster(projected, 2)
        one = np.zeros(len(projected), int)
        errors = {}
        for n, labels in ((1, one), (2, two)):
            e = der(item.reference, turns(r["spans"], r["starts"], r["ends"], labels, seconds), seconds)
            errors[n] = (e["scored"], e["missed"] + e["false_alarm"] + e["confusion"])
        out.append({"kind": item.kind, "speakers": len(item.actors), "prints": projected, "two": two, **errors})
    return out


def score(outcome: list[dict], threshold: float) -> dict:
    """DER and count accuracy per kind, the count estimated at this threshold (as alignment.diarization.cluster)."""
    totals = {kind: {"scored": 0.0, "error": 0.0, "right": 0, "n": 0} for kind in KINDS}
    for r in outcome:
        found = 2 if distinct(r["prints"], r["two"], threshold) else 1
        t = totals[r["kind"]]
        t["scored"] += r[found][0]
        t["error"] += r[found][1]
        t["right"] += found == r["speakers"]
        t["n"] += 1
    return {kind: {"der": t["error"] / t["scored"], "count": t["right"] / t["n"]} for kind, t in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech", default="../shared/data/ravdess-speech-16k")
    parser.add_argument("--nemo", default="../shared/data/nemo-pl")
    parser.add_argument("--count", type=int, default=20, help="tuning recordings per kind")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", default=os.path.relpath(NUISANCE_FILE), help="where the directions go")
    parser.add_argument("--out", required=True, help="markdown file of the choice")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    encoder, detector = SpeakerEncoder(), SpeechDetector()
    prints = take_prints(encoder, Path(args.speech), Path(args.nemo))
    prepared = prepare(recordings(Path(args.speech), list(TUNING_ACTORS), args.count, 60.0, 1), encoder, detector)
    rows = []
    for k in CANDIDATES:
        v = directions(prints, k)
        outcome = outcomes(prepared, v)
        best = None
        for threshold in np.arange(0.04, 0.60, 0.005):
            result = score(outcome, float(threshold))
            count = np.mean([result[kind]["count"] for kind in KINDS])
            key = (count, -result["same-sex"]["der"])
            if best is None or key > best[0]:
                best = (key, float(threshold), result)
        _, threshold, result = best
        scored = [result[kind]["der"] for kind in KINDS]
        rows.append({"k": k, "threshold": threshold, "result": result, "der": float(np.mean(scored)), "v": v})
    chosen = min(rows, key=lambda r: r["der"])
    save_weights(Path(args.save), {"directions": torch.from_numpy(np.ascontiguousarray(chosen["v"]))})
    lines = [
        "# Speaker encoder: nuisance directions and the two-speaker threshold, chosen on actors 01-10",
        "",
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.speaker_nuisance', *sys.argv[1:]])}`  ",
        f"Machine: {describe_machine()}; {args.threads} torch threads; {time.perf_counter() - started:.0f} s.",
        "",
        f"Directions fitted on {len(prints)} takes of {len({s for s, _ in prints})} speakers (RAVDESS actors 01-10, 9"
        f" nEMO speakers). Tuning recordings: {len(prepared)} (benchmarks/speakers.py, actors 01-10, seed 1). Per k,"
        " the threshold that gets the speaker count right most often; DER with that estimated count.",
        "",
        "| k | threshold | DER same-sex | DER different-sex | DER one speaker | count right same / different / one"
        " | mean DER |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        res = r["result"]
        counts = " / ".join(f"{100 * res[kind]['count']:.0f}%" for kind in KINDS)
        ders = " | ".join(f"{100 * res[kind]['der']:.1f}%" for kind in KINDS)
        mark = " **(kept)**" if r is chosen else ""
        lines.append(f"| {r['k']}{mark} | {r['threshold']:.3f} | {ders} | {counts} | {100 * r['der']:.1f}% |")
    lines += ["", f"Kept: k = {chosen['k']}, threshold {chosen['threshold']:.3f}, saved to `{args.save}`."]
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
