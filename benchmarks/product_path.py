"""What users get through fusion.predict, against what the voice expert's own benchmark measures, on RAVDESS speakers
the voice never heard.

    python -m benchmarks.product_path --cache ../cache/speech --work ../cache/product --folds 3 \
        --out benchmarks/results/product_path

Folds over RAVDESS actors 01-18 (speaker-independent). For each fold the voice expert is trained by the shipped
recipe (fusion/checkpoints/default/voice/config.json: its corpora with RAVDESS's test actors left out, its model and
training settings, speaker normalisation included), then scored on the fold's test actors:

- the benchmark path: each file read whole from the speech cache (float32 Whisper states), predict_proba; for a voice
  with speaker normalisation in two views: each test actor's recordings standardised together (the expert's own
  benchmark, as benchmarks/ravdess_folds.py scores it) and each recording alone (what a short clip gets);
- the product path: a copy of the shipped bundle with this voice expert, each file through Predictor.predict
  (decoding, VAD, Whisper's segments, bf16 states, the experts, the fusion), its label the summary's, exactly as
  `fusion evaluate` scores it; the experts' outputs per segment are saved (work/fold*/outputs.npz) so that fusions
  can be compared on them (benchmarks/fusion_gates.py). Again with each actor's recordings read together
  (Predictor.predict_together, as `fusion evaluate --by-speaker`): work/fold*/outputs-together.npz.

Beside them, in the same run and folds, the pooled Whisper block-3 states + logistic regression probe trained on the
fold's training actors. The 11 audio-visual clips go through the fold bundle that did not hear their actor.
UA = macro recall; 7 classes (calm counted as neutral) and RAVDESS's 8 for the benchmark path.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks.child import describe_machine, write_results
from fusion.evaluation import predict_files
from fusion.experts.voice import VoiceConfig, VoiceExpert, predict_proba, to_canonical, voice_label
from fusion.labels import EMOTIONS, MODALITIES, ravdess_fields
from fusion.serving.predictor import DEFAULT_CHECKPOINT, Predictor
from fusion.training.datasets import from_specs, ravdess
from fusion.training.metrics import score
from fusion.training.splits import speaker_folds
from fusion.training.voice import SpeechCache, VoiceTrainConfig, fit

PROBE_BLOCK = 3  # as benchmarks/ravdess_folds.py: the probe's best block (benchmarks/results/whisper_blocks.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--cache", required=True, help="speech feature cache folder")
    parser.add_argument("--work", required=True, help="folder for the fold models, bundles and outputs (resumable)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    shared, work = Path(args.shared), Path(args.work)
    shipped, speech, others = recipe_corpora(shared)
    cache = SpeechCache(args.cache)
    speech_features, _ = cache.build([e.path for e in speech], progress=False)
    clips = sorted((shared / "data/av-clips/ravdess").glob("*.mp4"))
    report = {"command": " ".join(["python -m benchmarks.product_path", *sys.argv[1:]]), "machine": describe_machine()}
    report["recipe"] = shipped["training"]["config"]
    report["folds"] = []
    for k, (train, test) in enumerate(speaker_folds(speech, args.folds)):
        folder = work / f"fold{k}"
        actors = sorted({speech[i].speaker for i in test})
        voice = _voice(
            folder / "voice",
            [speech[i] for i in train],
            [speech_features[i] for i in train],
            others,
            cache,
            shipped,
        )
        record = {"fold": k, "test_actors": actors}
        record["benchmark_path"] = _benchmark_path(
            voice, [speech[i] for i in test], [speech_features[i] for i in test], work / "oof" / f"seed0-fold{k}.npz"
        )
        record["probe"] = _probe(
            [speech[i] for i in train],
            [speech_features[i] for i in train],
            [speech[i] for i in test],
            [speech_features[i] for i in test],
        )
        bundle = _bundle(folder / "bundle", folder / "voice")
        mine = [c for c in clips if f"ravdess:{ravdess_fields(c)['actor']}" in actors]
        clip_items = [(c, _clip_label(c), f"ravdess:{ravdess_fields(c)['actor']}") for c in mine]
        for together, suffix in ((False, ""), (True, "-together")):
            _product_path(
                bundle,
                [(e.path, e.label, e.speaker) for e in (speech[i] for i in test)],
                folder / f"outputs{suffix}.npz",
                together=together,
            )
            _product_path(bundle, clip_items, folder / f"clips{suffix}.npz", together=together)
        record["seconds"] = time.perf_counter() - started
        report["folds"].append(record)
        print(
            json.dumps(
                {k: v for k, v in record.items() if k != "benchmark_path"}
                | {"benchmark_ua7": record["benchmark_path"]["7"]["ua"]}
            ),
            flush=True,
        )
    report["wall_seconds"] = time.perf_counter() - started
    write_results(report, Path(args.out), markdown)


def recipe_corpora(shared: Path) -> tuple[dict, list, list]:
    """The shipped voice's config, RAVDESS speech, and the recipe's other corpora read from this shared folder."""
    shipped = json.loads((DEFAULT_CHECKPOINT / "voice" / "config.json").read_text())
    corpora = dict(spec.split("=", 1) for spec in shipped["training"]["data"])
    speech = ravdess(shared / "data/ravdess-speech-16k").examples
    others = from_specs(
        [f"{kind}={shared / 'data' / Path(path).name}" for kind, path in corpora.items() if kind != "ravdess"]
    ).examples
    return shipped, speech, others


def _voice(folder: Path, train, train_features, others, cache: SpeechCache, shipped) -> VoiceExpert:
    """The fold's voice expert by the shipped recipe (read back when trained before; resumable). The other corpora's
    features are read only to train (about 10 GB in memory)."""
    if (folder / "config.json").is_file():
        return VoiceExpert.load(folder)
    other_features, _ = cache.build([e.path for e in others], progress=False)
    return fold_voice(folder, list(train) + list(others), list(train_features) + list(other_features), shipped)


def fold_voice(
    folder: Path, examples, features, shipped, *, model: dict | None = None, training: dict | None = None
) -> VoiceExpert:
    """A voice trained by the shipped recipe, its model and training settings overridden by `model` and `training`,
    saved to folder (read back when trained before; resumable)."""
    if (folder / "config.json").is_file():
        return VoiceExpert.load(folder)
    settings = shipped["model"] | {k: tuple(shipped["model"][k]) for k in ("labels", "whisper_blocks")} | (model or {})
    config = VoiceTrainConfig(**shipped["training"]["config"] | (training or {}))
    result = fit(
        features,
        [voice_label(e.dataset, e.label, e.native_label) for e in examples],
        groups=[e.dataset for e in examples],
        speakers=[e.speaker for e in examples],
        model_config=VoiceConfig(**settings),
        train_config=config,
        state_dir=folder,
        resume=(folder / "training_state.pt").is_file(),
    )
    result.model.save(folder, extra={"training": {"seconds": result.seconds, "config": asdict(config)}})
    return result.model


def _benchmark_path(model, examples, features, out: Path) -> dict:
    """The files read whole from the speech cache; their canonical probabilities saved to out, as `fusion ablate
    --out-of-fold audio=FOLDER` reads them. With speaker normalisation, each actor's recordings standardised
    together (saved) and, under "alone", each recording alone."""
    views = {"together": [e.speaker for e in examples]}
    if model.config.speaker_normalisation:
        views["alone"] = None
    result = {}
    for view, speakers in views.items():
        probabilities = predict_proba(model, features, speakers=speakers)
        if view == "together":
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(out, paths=np.array([e.path for e in examples]), probabilities=to_canonical(probabilities))
        eight = [model.config.labels[k] for k in probabilities.argmax(1)]
        true8 = [voice_label(e.dataset, e.label, e.native_label) for e in examples]
        seven = [EMOTIONS[k] for k in to_canonical(probabilities).argmax(1)]
        scores = {
            "8": score(true8, eight, model.config.labels).as_dict(),
            "7": score([e.label for e in examples], seven, EMOTIONS).as_dict(),
        }
        if view == "together":
            result |= scores
        else:
            result["alone"] = scores
    return result


def _pooled(features) -> np.ndarray:
    rows = [f.states[PROBE_BLOCK - 1].astype(np.float32) for f in features]
    return np.stack([np.concatenate([r.mean(0), r.std(0)]) for r in rows])


def _probe(train, train_features, test, test_features) -> dict:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    model.fit(_pooled(train_features), [e.label for e in train])
    return score([e.label for e in test], list(model.predict(_pooled(test_features))), EMOTIONS).as_dict()


def _bundle(folder: Path, voice: Path) -> Path:
    """A copy of the shipped bundle whose voice expert is the fold's."""
    if not (folder / "experts.json").is_file():
        shutil.copytree(DEFAULT_CHECKPOINT, folder, dirs_exist_ok=True)
        shutil.rmtree(folder / "voice")
        (folder / "voice").mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(voice / name, folder / "voice" / name)
    return folder


def _clip_label(clip: Path) -> str:
    from fusion.labels import ravdess_label

    return ravdess_label(clip.name)


def _product_path(bundle: Path, items, out: Path, *, together: bool) -> None:
    """Each (path, label, speaker) item through Predictor.predict with the fold bundle (together: each speaker's
    recordings through Predictor.predict_together, as `fusion evaluate --by-speaker` reads them); per file its
    label and, per segment, its duration and each expert's probabilities (NaN where absent), saved to out (skipped
    when there)."""
    if out.is_file():
        return
    speakers = [speaker for _, _, speaker in items] if together else None
    predictions = predict_files(Predictor(bundle), [str(path) for path, _, _ in items], speakers=speakers)
    for prediction in predictions:
        if isinstance(prediction, Exception):
            raise prediction
    paths, labels, durations, index, outputs = [], [], [], [], {m: [] for m in MODALITIES}
    for number, ((path, label, _), prediction) in enumerate(zip(items, predictions)):
        paths.append(str(path))
        labels.append(label)
        durations.append((prediction.timeline["end"] - prediction.timeline["start"]).to_numpy())
        index.append(np.full(len(prediction.timeline), number))
        for m in MODALITIES:
            outputs[m].append(prediction.experts[m])
    np.savez(
        out,
        paths=np.array(paths),
        labels=np.array(labels),
        durations=np.concatenate(durations),
        file_index=np.concatenate(index),
        **{m: np.concatenate(outputs[m]) for m in MODALITIES},
    )


def markdown(report: dict) -> str:
    """The benchmark path and the probe per fold; the product path's figures come from the saved outputs
    (benchmarks/fusion_gates.py), which fuse them as the shipped and the candidate fusions do."""
    lines = [
        "# The voice expert's benchmark path on held-out RAVDESS actors (the product path: fusion_gates.md)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min (training included).",
        "",
        "| fold | test actors | voice, benchmark path, UA 8 classes | UA 7 classes "
        "| each recording alone, UA 7 classes | probe, UA 7 classes |",
        "|---|---|---|---|---|---|",
    ]
    columns = (
        lambda f: f["benchmark_path"]["8"]["ua"],
        lambda f: f["benchmark_path"]["7"]["ua"],
        lambda f: f["benchmark_path"].get("alone", {}).get("7", {}).get("ua", np.nan),
        lambda f: f["probe"]["ua"],
    )
    for f in report["folds"]:
        cells = " | ".join(f"{100 * get(f):.1f}" for get in columns)
        lines.append(f"| {f['fold']} | {', '.join(a.split(':')[1] for a in f['test_actors'])} | {cells} |")
    means = " | ".join(f"{100 * np.mean([get(f) for f in report['folds']]):.1f}" for get in columns)
    lines.append(f"| mean | | {means} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
