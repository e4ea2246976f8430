"""The default model's whole training as one resumable command: each expert's stage, then the bundle.

    fusion bundle --recipe fusion/checkpoints/default/experts.json --work runs/default --out runs/model

A recipe (a JSON file, or the "recipe" entry of a bundle's experts.json, which is how the shipped model records the
one that made it) lists the stages in order, each a `fusion train-expert` command, then what the bundle stage reads:

    {"stages": [{"name": "voice", "modality": "audio", "arguments": ["--data", "ravdess={shared}/...", ...]},
                {"name": "text-teacher", "modality": "text", "arguments": [...]},
                {"name": "text", "modality": "text", "arguments": [..., "--teacher", "{stage:text-teacher}"]},
                {"name": "face", "modality": "face", "arguments": [...]}],
     "bundle": {"voice": "voice", "text": "text", "face": "face", "voice_data": [...], "text_data": "meld=...",
                "face_data": "fer2013=...", "face_views": "flip", "face_precision": "bf16", "face_dtype": "int8",
                "voice_temperature": 0.86}}

In arguments and data, {shared} is the shared data folder (--shared, else $FUSION_SHARED, else ../shared), {work}
the work folder, and {stage:NAME} the folder of an earlier stage. A bundle's experts.json that lacks
voice_temperature in its recipe gives the one its calibration records. Stage NAME trains into WORK/NAME in a process of
its own; it is done when WORK/NAME.done exists (written after the stage exits cleanly), and a stage cut short
continues with --resume (each expert saves its whole state every epoch). An expert given by path (--voice, --text,
--face) is reused: the stages that make it, and those only it needed, are not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from fusion.training.loop import STATE_FILE

EXPERT_MODULES = {"audio": "voice", "text": "text", "face": "face"}  # a stage's modality -> `fusion train-expert` NAME
BUNDLE_ROLES = ("voice", "text", "face")  # the bundle stage's expert entries, each naming a stage
DONE_SUFFIX = ".done"  # WORK/NAME.done: stage NAME finished (holds its command and seconds)


def read_recipe(path: str | os.PathLike) -> dict:
    """A recipe file, or the recipe inside a bundle's experts.json. ValueError says what is malformed."""
    path = Path(path)
    if path.is_dir():
        path = path / "experts.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    recipe = data.get("recipe", data)
    stages = recipe.get("stages")
    if not isinstance(stages, list) or not isinstance(recipe.get("bundle"), dict):
        raise ValueError(f"{path}: a recipe needs a 'stages' list and a 'bundle' entry")
    names = [s.get("name") for s in stages]
    for stage in stages:
        if stage.get("modality") not in EXPERT_MODULES or not isinstance(stage.get("arguments"), list):
            raise ValueError(f"{path}: stage {stage.get('name')!r} needs a modality in {sorted(EXPERT_MODULES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: stage names repeat: {names}")
    for role in BUNDLE_ROLES:
        named = recipe["bundle"].get(role)
        if named is not None and named not in names:
            raise ValueError(f"{path}: the bundle's {role} names no stage ({named!r})")
    given = data.get("calibration", {}).get("audio", {}).get("temperature")
    if "recipe" in data and given is not None and "voice_temperature" not in recipe["bundle"]:
        # a bundle that records its recipe: its voice temperature was given to `fusion bundle`, and is kept
        recipe = {**recipe, "bundle": {**recipe["bundle"], "voice_temperature": given}}
    return recipe


def needed_stages(recipe: Mapping, reused: Mapping[str, str | os.PathLike | None]) -> list[dict]:
    """The stages to run, in order: those that make a bundle expert not reused, and the stages they refer to."""
    by_name = {s["name"]: s for s in recipe["stages"]}
    wanted = {recipe["bundle"][role] for role in BUNDLE_ROLES if recipe["bundle"].get(role) and not reused.get(role)}
    frontier = list(wanted)
    while frontier:
        for argument in by_name[frontier.pop()]["arguments"]:
            for name in by_name:
                if f"{{stage:{name}}}" in argument and name not in wanted:
                    wanted.add(name)
                    frontier.append(name)
    return [s for s in recipe["stages"] if s["name"] in wanted]


def fill(text: str, *, shared: Path, work: Path) -> str:
    """A recipe string with {shared}, {work} and {stage:NAME} filled in."""
    text = text.replace("{shared}", os.fspath(shared)).replace("{work}", os.fspath(work))
    while "{stage:" in text:
        start = text.index("{stage:")
        end = text.index("}", start)
        text = text[:start] + os.fspath(work / text[start + len("{stage:") : end]) + text[end + 1 :]
    return text


def run_stages(recipe: Mapping, work: Path, *, shared: Path, reused: Mapping, log=print) -> dict[str, Path]:
    """Run (or finish) every needed stage; -> {stage name: its folder} of the stages run or found done."""
    work.mkdir(parents=True, exist_ok=True)
    folders = {}
    for stage in needed_stages(recipe, reused):
        name, folder = stage["name"], work / stage["name"]
        done = work / f"{name}{DONE_SUFFIX}"
        folders[name] = folder
        if done.is_file():
            log(f"stage {name}: done before ({folder})")
            continue
        command = ["train-expert", EXPERT_MODULES[stage["modality"]]]
        command += [fill(a, shared=shared, work=work) for a in stage["arguments"]] + ["--out", os.fspath(folder)]
        if any(folder.rglob(STATE_FILE)):
            command.append("--resume")
        log(f"stage {name}: fusion {' '.join(command)}")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fusion.cli", *command], check=True)
        record = {"command": command, "seconds": time.perf_counter() - started}
        done.write_text(json.dumps(record, indent=2) + "\n")
    return folders


def default_shared() -> Path:
    return Path(os.environ.get("FUSION_SHARED", "../shared"))
