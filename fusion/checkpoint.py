"""Checkpoints: a folder with the trainable weights in safetensors and a JSON config. Never pickle.

config.json holds the label set, the fusion model's settings, the frozen encoders it expects (by name, never
copied) and the feature parameters it was trained with; loading refuses a checkpoint whose feature parameters
differ from this code's, since the model would silently see different inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from encoders import audio as audio_features
from encoders import face_detection
from fusion.errors import CheckpointError
from fusion.model import FusionConfig, FusionModel

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def feature_parameters() -> dict:
    """The encoder input settings this code computes; a checkpoint must have been trained with the same."""
    return {
        "audio": {
            "sample_rate": audio_features.SAMPLE_RATE,
            "n_fft": audio_features.N_FFT,
            "hop_length": audio_features.HOP_LENGTH,
            "n_mels": audio_features.N_MELS,
        },
        "face": {"size": face_detection.FACE_SIZE, "margin": face_detection.FACE_MARGIN},
    }


@dataclass(frozen=True)
class EncoderNames:
    """The frozen models a checkpoint's features came from: names or paths, resolved when loading."""

    whisper: str
    text: str


@dataclass
class Checkpoint:
    model: FusionModel
    encoders: EncoderNames
    fps: float  # video frames sampled per second when the features were extracted
    path: Path | None = None
    id: str = ""  # sha256 of the weights file, first 16 hex digits


def save(checkpoint: Checkpoint, directory: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Path:
    """Write model.safetensors and config.json into directory (created if needed); returns the directory.

    dtype float16 halves the file (for shipping a model as package data); loading casts back to float32.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "labels": list(checkpoint.model.config.labels),
        "model": dataclasses.asdict(checkpoint.model.config),
        "encoders": dataclasses.asdict(checkpoint.encoders),
        "features": feature_parameters() | {"fps": checkpoint.fps},
    }
    state = {
        k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in checkpoint.model.state_dict().items()
    }
    save_file(state, directory / WEIGHTS_FILE, metadata={"format_version": str(FORMAT_VERSION)})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder written by :func:`save`; the model is returned in eval mode on device."""
    directory = Path(directory)
    weights, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    for required in (weights, config_path):
        if not required.is_file():
            raise CheckpointError(f"{directory}: not a fusion checkpoint, {required.name} is missing")
    config = _read_config(config_path)
    expected = feature_parameters()
    trained = {k: v for k, v in config["features"].items() if k in expected}
    if trained != expected:
        raise CheckpointError(f"{directory}: trained with feature parameters {trained}, this code computes {expected}")

    model_config = config["model"] | {"labels": tuple(config["labels"])}
    unknown = sorted(set(model_config) - {f.name for f in dataclasses.fields(FusionConfig)})
    if unknown:
        raise CheckpointError(f"{config_path}: unknown model settings {unknown} (written by another version?)")
    try:
        model = FusionModel(FusionConfig(**model_config))
        encoders = EncoderNames(**config["encoders"])
        fps = float(config["features"]["fps"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{config_path}: model settings that do not build a model ({exc})") from exc
    try:
        model.load_state_dict(load_file(weights))
    except (SafetensorError, RuntimeError, OSError) as exc:  # a damaged file, or shapes that do not match
        raise CheckpointError(f"{weights}: cannot load weights ({exc})") from exc
    return Checkpoint(
        model=model.to(device).eval(),
        encoders=encoders,
        fps=fps,
        path=directory,
        id=_file_digest(weights),
    )


# config.json's keys and the JSON type each must have
CONFIG_SHAPE = {"format_version": int, "labels": list, "model": dict, "encoders": dict, "features": dict}


def _read_config(path: Path) -> dict:
    """config.json parsed and checked for the keys and types this code reads; CheckpointError names what is wrong."""
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a JSON text file ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    if "format_version" in config and config["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path.parent}: checkpoint format {config['format_version']!r}, this code reads {FORMAT_VERSION}"
        )
    for key, kind in CONFIG_SHAPE.items():
        if key not in config:
            raise CheckpointError(f"{path}: the key {key!r} is missing")
        if not isinstance(config[key], kind):
            raise CheckpointError(f"{path}: {key!r} must be a JSON {kind.__name__}, found {type(config[key]).__name__}")
    if "fps" not in config["features"]:
        raise CheckpointError(f"{path}: features lacks 'fps'")
    return config


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
