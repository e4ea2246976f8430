"""The package's shape: the public API imports from `fusion`, every command prints its help, and the import graph
keeps its layers (encoders and alignment know nothing of fusion; training knows nothing of serving)."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from fusion.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
PUBLIC_NAMES = (
    "predict",
    "load",
    "Predictor",
    "Prediction",
    "FusionError",
    "MediaError",
    "NoModalityError",
    "OutputError",
    "CheckpointError",
    "ModelNotFoundError",
    "EMOTIONS",
)
ERRORS = ("MediaError", "NoModalityError", "OutputError", "CheckpointError", "ModelNotFoundError")


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser, subcommands of subcommands included: ("predict",), ("train-expert", "face")."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                found.append((*prefix, name))
                found += _commands(subparser, (*prefix, name))
    return found


COMMANDS = _commands(build_parser())


def test_the_public_api_imports_from_fusion():
    import fusion

    for name in PUBLIC_NAMES:
        assert getattr(fusion, name) is not None, name
    assert set(PUBLIC_NAMES) <= set(fusion.__all__)
    for name in ERRORS:  # one root for callers to catch
        assert issubclass(getattr(fusion, name), fusion.FusionError), name


def test_every_command_is_listed():
    assert {c[0] for c in COMMANDS} == {"predict", "features", "train", "ablate", "train-expert", "bundle", "score"}
    assert {c for c in COMMANDS if c[0] == "train-expert" and len(c) == 2} == {
        ("train-expert", "audio"),
        ("train-expert", "text"),
        ("train-expert", "face"),
    }


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fusion {' '.join(command)}")


@pytest.mark.parametrize("command", ["features", "train", "ablate", "predict", "score"])
def test_commands_that_extract_features_choose_the_models(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--whisper-model", "--text-model", "--face-model")), out


def test_the_installed_entry_point_module_prints_its_help():
    run = subprocess.run([sys.executable, "-m", "fusion.cli", "--help"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: fusion")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function; `from fusion import x` counts as fusion.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _modules(folder: str) -> list[Path]:
    paths = sorted((REPO_ROOT / folder).rglob("*.py"))
    assert paths, folder
    return paths


@pytest.mark.parametrize("package", ["encoders", "alignment"])
def test_encoders_and_alignment_import_nothing_of_fusion(package):
    offending = {
        str(path.relative_to(REPO_ROOT)): sorted(m for m in _imports(path) if m == "fusion" or m.startswith("fusion."))
        for path in _modules(package)
    }
    assert not {path: modules for path, modules in offending.items() if modules}


def test_training_imports_nothing_of_serving():
    offending = {
        str(path.relative_to(REPO_ROOT)): sorted(m for m in _imports(path) if m.startswith("fusion.serving"))
        for path in _modules("fusion/training")
    }
    assert not {path: modules for path, modules in offending.items() if modules}


def test_the_moved_modules_left_nothing_at_their_old_paths():
    old = ("media", "streaming", "decode_worker", "features", "orphans", "predictor", "score", "plot", "memory")
    old += ("datasets", "cache", "augment", "train", "ablation", "metrics")
    assert not [name for name in old if (REPO_ROOT / "fusion" / f"{name}.py").exists()]


def test_the_shipped_model_is_found_from_the_serving_package(monkeypatch):
    from fusion.serving.predictor import DEFAULT_CHECKPOINT, resolve_checkpoint

    monkeypatch.delenv("FUSION_CHECKPOINT", raising=False)
    assert DEFAULT_CHECKPOINT == REPO_ROOT / "fusion" / "checkpoints" / "default"
    assert resolve_checkpoint(None) == DEFAULT_CHECKPOINT
