"""The shipped model's timelines on every shared audio-visual clip, saved or compared with a saved run.

A change that must not change predictions (a refactor) is checked so: save before, compare after.

    python -m benchmarks.same_predictions --save ../cache/before.json
    python -m benchmarks.same_predictions --compare ../cache/before.json   # max abs difference, exit 1 above 1e-6
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

TOLERANCE = 1e-6  # largest absolute difference of a probability that counts as the same prediction


def clips(shared: Path) -> list[Path]:
    return sorted((shared / "data" / "av-clips").rglob("*.mp4"))


def timelines(shared: Path) -> dict[str, dict]:
    import fusion

    predictor = fusion.load()
    out = {}
    for clip in clips(shared):
        result = predictor.predict(clip)
        columns = [*result.labels, "label", "modalities", "start", "end", "text"]
        out[clip.name] = {
            "rows": result.timeline[columns].to_dict("records"),
            "summary": result.summary.probabilities,
        }
    return out


def difference(before: dict, after: dict) -> tuple[float, list[str]]:
    """-> (largest absolute difference of any probability or time, differences that are not numbers)."""
    worst, other = 0.0, []
    if sorted(before) != sorted(after):
        other.append(f"clips differ: {sorted(before)} against {sorted(after)}")
    for name in sorted(set(before) & set(after)):
        a, b = before[name], after[name]
        if len(a["rows"]) != len(b["rows"]):
            other.append(f"{name}: {len(a['rows'])} segments against {len(b['rows'])}")
            continue
        for row_a, row_b in zip(a["rows"], b["rows"]):
            for key, value in row_a.items():
                if isinstance(value, float) and not (math.isnan(value) and math.isnan(row_b[key])):
                    worst = max(worst, abs(value - row_b[key]))
                elif not isinstance(value, float) and value != row_b[key]:
                    other.append(f"{name}: {key} {value!r} against {row_b[key]!r}")
        for label, p in a["summary"].items():
            worst = max(worst, abs(p - b["summary"][label]))
    return worst, other


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get("FUSION_SHARED", "../shared"))
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--save", help="JSON file to write the timelines to")
    which.add_argument("--compare", help="JSON file of a saved run to compare with")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    now = timelines(Path(args.shared))
    if args.save:
        Path(args.save).write_text(json.dumps(now, indent=1))
        print(f"{len(now)} clips saved to {args.save} in {time.perf_counter() - started:.0f} s")
        return 0
    worst, other = difference(json.loads(Path(args.compare).read_text()), now)
    print(f"{len(now)} clips: max abs difference {worst:.2e}; {len(other)} other differences")
    for line in other:
        print(f"  {line}")
    return 0 if worst <= TOLERANCE and not other else 1


if __name__ == "__main__":
    sys.exit(main())
