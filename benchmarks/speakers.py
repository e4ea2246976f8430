"""Speaker diarization (alignment.diarization) on two-person "interviews" built from real RAVDESS voices.

    python -m benchmarks.speakers --tuning --out benchmarks/results/speakers/speakers.md

Each recording is built at run time, seeded: takes of two different actors in alternating turns of 1-4 takes each,
with pauses of 0.2-1.0 s between takes and, at 10% of the changes of speaker, the next speaker starting 0.3 s before
the other ends (overlap); about 60 s each. Takes are trimmed to their speech first (35 dB under the take's peak, and
never under -60 dBFS), and each trimmed take is one reference turn, so the ground truth is known to the sample.
Pauses are silence with a faint noise floor; takes keep their recorded loudness. Same-sex pairs (both male or both
female) are harder than different-sex pairs, so they are reported apart; one-speaker recordings (takes of one actor,
all eight emotions) test that one voice is not split into two. The speaker count is estimated (diarize(...,
speakers=None)); the DER with the count given is reported beside it.

Honesty: the constants of alignment.diarization were tuned on recordings of actors 01-10 (seed 1); the reported figures
are on actors 11-18, which the tuning never saw. ``--tuning`` adds the tuning recordings' figures, for comparison.

Diarization error rate, as computed here (on a 10 ms grid): scored time is the reference speaker time (a moment
where two people speak counts twice) outside a 0.25 s collar around every reference turn's start and end. On it,
missed speech = reference speakers beyond the hypothesis's (at most one here), false alarm = hypothesis speakers
beyond the reference's, confusion = reference speakers not matched by the hypothesis under the one-to-one mapping of
hypothesis to reference speakers that matches the most time (Hungarian algorithm). DER = (missed + false alarm +
confusion) / scored time, pooled over the recordings of a group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from alignment.diarization import Turn, diarize
from benchmarks.child import describe_machine
from encoders.speakers import SAMPLE_RATE, SpeakerEncoder
from encoders.vad import SpeechDetector
from fusion.media.decoding import decode

TRIM_DB = 35  # dB under a take's peak where its speech starts and ends: keeps soft onsets, drops the room tone
# ... but never under -60 dBFS (10 dB over NOISE_FLOOR): a whispered take peaks so low that 35 dB under its peak is
# the studio's silence, which would make a second of silence reference speech
TRIM_FLOOR_DBFS = -60.0
TURN_TAKES = (1, 4)  # takes per turn, inclusive
PAUSE_SECONDS = (0.2, 1.0)  # silence between takes, uniform
OVERLAP_SECONDS = 0.3  # how far the next speaker starts before the other ends, at OVERLAP_SHARE of the changes
OVERLAP_SHARE = 0.1
EDGE_SECONDS = 0.5  # silence before the first take and after the last
NOISE_FLOOR = 3e-4  # standard deviation of the noise under everything (about -70 dBFS): no perfectly digital silence
COLLAR_SECONDS = 0.25  # not scored on either side of a reference turn's start and end
GRID_SECONDS = 0.01  # the scoring grid


@dataclass
class Recording:
    kind: str  # "same-sex", "different-sex", "one speaker"
    actors: tuple[int, ...]
    audio: np.ndarray  # (samples,) float32 16 kHz
    reference: list[Turn]  # one per take, speaker "A<actor>"


def takes(root: Path, actor: int) -> list[Path]:
    return sorted((root / f"Actor_{actor:02d}").glob("*.flac"))


def trimmed(path: Path) -> np.ndarray | None:
    """A take's audio from the first to the last 32 ms frame over both TRIM_DB under its peak and TRIM_FLOOR_DBFS;
    None for a take with no frame over the floor."""
    audio = decode(path).audio
    level = librosa.amplitude_to_db(librosa.feature.rms(y=audio, frame_length=512, hop_length=128)[0], ref=1.0)
    loud = np.flatnonzero(level > max(level.max() - TRIM_DB, TRIM_FLOOR_DBFS))
    if len(loud) == 0:
        return None
    return audio[max(0, loud[0] * 128 - 256) : loud[-1] * 128 + 256]  # frame i is centred on sample i * 128


def build(rng: np.random.Generator, root: Path, actors: tuple[int, ...], seconds: float, kind: str) -> Recording:
    """Alternating turns of the actors (one actor: one long monologue of takes) until about `seconds`."""
    pools = {a: list(rng.permutation(takes(root, a))) for a in actors}
    placed: list[tuple[float, np.ndarray, int]] = []  # (start s, audio, actor)
    t = EDGE_SECONDS
    speaker = int(rng.integers(len(actors)))
    while t < seconds - EDGE_SECONDS:
        actor = actors[speaker]
        for _ in range(int(rng.integers(TURN_TAKES[0], TURN_TAKES[1] + 1))):
            if not pools[actor]:  # every take used: go round again, in a new order
                pools[actor] = list(rng.permutation(takes(root, actor)))
            audio = trimmed(pools[actor].pop())
            if audio is None:  # a take too faint to hear over the noise floor
                continue
            placed.append((t, audio, actor))
            t += len(audio) / SAMPLE_RATE + rng.uniform(*PAUSE_SECONDS)
        if len(actors) > 1:
            speaker = (speaker + 1) % len(actors)
            if rng.random() < OVERLAP_SHARE:  # the next one starts before this one ends
                t = placed[-1][0] + len(placed[-1][1]) / SAMPLE_RATE - OVERLAP_SECONDS
    end = max(s + len(a) / SAMPLE_RATE for s, a, _ in placed) + EDGE_SECONDS
    mix = (rng.standard_normal(int(end * SAMPLE_RATE)) * NOISE_FLOOR).astype(np.float32)
    reference = []
    for start, audio, actor in placed:
        i = int(round(start * SAMPLE_RATE))
        mix[i : i + len(audio)] += audio
        reference.append(Turn(i / SAMPLE_RATE, (i + len(audio)) / SAMPLE_RATE, f"A{actor:02d}"))
    return Recording(kind, actors, mix, reference)


def recordings(root: Path, actors: list[int], count: int, seconds: float, seed: int) -> list[Recording]:
    """count same-sex and count different-sex interviews of two actors, and count one-speaker recordings."""
    rng = np.random.default_rng(seed)
    male = [a for a in actors if a % 2 == 1]
    female = [a for a in actors if a % 2 == 0]
    out = []
    for i in range(count):
        group = male if i % 2 == 0 else female
        pair = tuple(int(a) for a in rng.choice(group, 2, replace=False))
        out.append(build(rng, root, pair, seconds, "same-sex"))
    for _ in range(count):
        pair = (int(rng.choice(male)), int(rng.choice(female)))
        out.append(build(rng, root, tuple(int(a) for a in rng.permutation(pair)), seconds, "different-sex"))
    for i in range(count):
        out.append(build(rng, root, (actors[i % len(actors)],), seconds, "one speaker"))
    return out


def grid(turns: list[Turn], speakers: list[str], frames: int) -> np.ndarray:
    """(frames, len(speakers)) bool: who speaks in each GRID_SECONDS frame."""
    on = np.zeros((frames, len(speakers)), bool)
    for turn in turns:
        on[
            int(round(turn.start / GRID_SECONDS)) : int(round(turn.end / GRID_SECONDS)), speakers.index(turn.speaker)
        ] = True
    return on


def der(reference: list[Turn], hypothesis: list[Turn], seconds: float) -> dict[str, float]:
    """Scored, missed, false alarm and confused seconds (see the module docstring)."""
    frames = int(np.ceil(seconds / GRID_SECONDS)) + 1
    ref_names = sorted({t.speaker for t in reference})
    hyp_names = sorted({t.speaker for t in hypothesis})
    ref, hyp = grid(reference, ref_names, frames), grid(hypothesis, hyp_names, frames)
    scored = np.ones(frames, bool)
    collar = int(round(COLLAR_SECONDS / GRID_SECONDS))
    for turn in reference:
        for edge in (turn.start, turn.end):
            i = int(round(edge / GRID_SECONDS))
            scored[max(0, i - collar) : i + collar] = False
    ref, hyp = ref[scored], hyp[scored]
    n_ref, n_hyp = ref.sum(1), hyp.sum(1)
    matched = 0
    if ref_names and hyp_names:
        together = ref.T.astype(np.int64) @ hyp.astype(np.int64)  # (ref speakers, hyp speakers) frames together
        rows, cols = linear_sum_assignment(-together)
        correct = np.zeros(len(ref), np.int64)
        for r, c in zip(rows, cols):
            correct += ref[:, r] & hyp[:, c]
        matched = int(correct.sum())
    return {
        "scored": float(n_ref.sum() * GRID_SECONDS),
        "missed": float(np.maximum(n_ref - n_hyp, 0).sum() * GRID_SECONDS),
        "false_alarm": float(np.maximum(n_hyp - n_ref, 0).sum() * GRID_SECONDS),
        "confusion": float((np.minimum(n_ref, n_hyp).sum() - matched) * GRID_SECONDS),
    }


def evaluate(items: list[Recording], encoder: SpeakerEncoder, detector: SpeechDetector) -> list[dict]:
    """Diarize each recording with the speaker count estimated (timed) and with it given; error times and counts."""
    rows = []
    for item in items:
        seconds = len(item.audio) / SAMPLE_RATE
        started = time.perf_counter()
        estimated = diarize(item.audio, encoder=encoder, detector=detector)
        cost = time.perf_counter() - started
        given = diarize(item.audio, encoder=encoder, detector=detector, speakers=len(item.actors))
        rows.append(
            {
                "kind": item.kind,
                "actors": list(item.actors),
                "seconds": seconds,
                "cost_s": cost,
                "speakers": len(item.actors),
                "found": len({t.speaker for t in estimated}),
                **der(item.reference, estimated, seconds),
                "given": der(item.reference, given, seconds),
            }
        )
    return rows


def summary(rows: list[dict]) -> dict:
    """Pooled error shares of a group of recordings, with the count estimated and (given_der) given."""
    scored = sum(r["scored"] for r in rows)
    errors = {k: sum(r[k] for r in rows) for k in ("missed", "false_alarm", "confusion")}
    given = sum(r["given"][k] for r in rows for k in ("missed", "false_alarm", "confusion"))
    return {
        "recordings": len(rows),
        "minutes": sum(r["seconds"] for r in rows) / 60,
        "der": sum(errors.values()) / scored,
        **{k: v / scored for k, v in errors.items()},
        "count_right": sum(r["found"] == r["speakers"] for r in rows) / len(rows),
        "given_der": given / sum(r["given"]["scored"] for r in rows),
        "seconds_per_minute": sum(r["cost_s"] for r in rows) / sum(r["seconds"] for r in rows) * 60,
    }


KINDS = ("same-sex", "different-sex", "one speaker")


def table(rows: list[dict]) -> tuple[list[str], dict]:
    """The markdown table of a run's groups, and the groups' summaries."""
    groups = {kind: summary([r for r in rows if r["kind"] == kind]) for kind in KINDS}
    lines = [
        "| recordings | n | minutes | DER | missed | false alarm | confusion | count right | DER, count given "
        "| s per minute of audio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, s in groups.items():
        lines.append(
            f"| {kind} | {s['recordings']} | {s['minutes']:.1f} | {100 * s['der']:.1f}% | {100 * s['missed']:.1f}% | "
            f"{100 * s['false_alarm']:.1f}% | {100 * s['confusion']:.1f}% | {100 * s['count_right']:.0f}% | "
            f"{100 * s['given_der']:.1f}% | {s['seconds_per_minute']:.2f} |"
        )
    wrong = [r for r in rows if r["found"] != r["speakers"]]
    lines += ["", f"Speaker count wrong on {len(wrong)} of {len(rows)} recordings" + (":" if wrong else ".")]
    lines += [f"- {r['kind']}, actors {r['actors']}: {r['found']} found" for r in wrong]
    return lines, groups


def actor_range(text: str) -> list[int]:
    first, last = (int(x) for x in text.split("-"))
    return list(range(first, last + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech", default="../shared/data/ravdess-speech-16k")
    parser.add_argument("--actors", default="11-18", help="actors to build the reported recordings from")
    parser.add_argument("--count", type=int, default=20, help="recordings per group")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each recording, about")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tuning", action="store_true", help="also report the tuning recordings (actors 1-10, seed 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the cost is per this many)")
    parser.add_argument("--out", default="benchmarks/results/speakers/speakers.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]  # other work on the machine slows the timings: said in the results
    started = time.perf_counter()
    encoder, detector = SpeakerEncoder(), SpeechDetector()
    items = recordings(Path(args.speech), actor_range(args.actors), args.count, args.seconds, args.seed)
    diarize(items[0].audio[: 10 * SAMPLE_RATE], encoder=encoder, detector=detector)  # warm up, out of the timing
    rows = evaluate(items, encoder, detector)
    test_lines, groups = table(rows)
    payload = {"actors": args.actors, "seed": args.seed, "groups": groups, "recordings": rows}
    tuning_lines: list[str] = []
    if args.tuning:
        tuning = evaluate(
            recordings(Path(args.speech), actor_range("1-10"), args.count, args.seconds, 1), encoder, detector
        )
        tuning_lines, tuning_groups = table(tuning)
        payload["tuning"] = {"actors": "1-10", "seed": 1, "groups": tuning_groups, "recordings": tuning}
    wall = time.perf_counter() - started
    unseen = set(actor_range(args.actors)).isdisjoint(range(1, 11))
    lines = [
        "# Speaker diarization on two-person interviews built from RAVDESS",
        "",
        f"Command: `python -m benchmarks.speakers {' '.join(sys.argv[1:])}`  ",
        f"Machine: {describe_machine()}  ",
        f"Wall time: {wall:.0f} s (building the recordings included); load average at the start {load:.1f}",
        "",
        f"Each recording is about {args.seconds:.0f} s of takes of two actors in alternating turns of 1-4 takes, "
        "pauses 0.2-1.0 s, a 0.3 s overlap at 10% of the changes of speaker (one-speaker recordings: one actor's "
        "takes, all emotions). The speaker count is estimated (1 or 2); the DER with the count given to diarize() is "
        "beside it. DER: (missed + false alarm + confusion) / scored reference speaker time, 0.25 s collar around "
        "every reference boundary, pooled over the group (benchmarks/speakers.py says exactly how). Cost: VAD, speaker "
        f"embeddings and clustering together, models loaded once, {torch.get_num_threads()} torch thread(s).",
        "",
        f"## Actors {args.actors}, seed {args.seed}"
        + (": speakers the tuning never saw" if unseen else ": the tuning's speakers, so these figures are optimistic"),
        "",
        "alignment.diarization's constants (threshold, shares, gaps) were tuned on actors 01-10 only.",
        "",
        *test_lines,
    ]
    if tuning_lines:
        lines += [
            "",
            "## Actors 1-10, seed 1: the recordings the constants were tuned on, for comparison",
            "",
            *tuning_lines,
        ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    command = f"python -m benchmarks.speakers {' '.join(sys.argv[1:])}"
    payload = {"command": command, "machine": describe_machine(), "wall_s": wall, "load_average": load, **payload}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
