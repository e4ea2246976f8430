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
    assert {c[0] for c in COMMANDS} == {"predict", "evaluate", "ablate", "train-expert", "bundle", "score"}
    assert {c for c in COMMANDS if c[0] == "train-expert" and len(c) == 2} == {
        ("train-expert", "voice"),
        ("train-expert", "text"),
        ("train-expert", "face"),
    }


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fusion {' '.join(command)}")


@pytest.mark.parametrize("command", ["ablate", "evaluate", "predict", "score"])
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
    old += ("datasets", "cache", "augment", "train", "ablation", "metrics", "model", "checkpoint")
    assert not [name for name in old if (REPO_ROOT / "fusion" / f"{name}.py").exists()]
    retired = ("fusion/experts/audio.py", "fusion/experts/state.py", "fusion/training/train.py", "encoders/face.py")
    assert not [path for path in retired if (REPO_ROOT / path).exists()]


PACKAGES = ("fusion", "encoders", "alignment")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports} over fusion, encoders and alignment (imports inside functions
    count: they run too)."""
    paths = [path for package in PACKAGES for path in _modules(package)]
    names = {_module_name(path) for path in paths}
    graph = {}
    for path in paths:
        targets = set()
        for imported in _imports(path):
            while imported and imported not in names:  # `from a.b import c`: a.b.c when c is a module, else a.b
                imported = imported.rpartition(".")[0]
            if imported:
                targets.add(imported)
        graph[_module_name(path)] = targets - {_module_name(path)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_of(module: str) -> str:
    """fusion.experts.voice -> fusion.experts; a top-level module of a package (fusion.errors) is its own node."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycles_between_modules_or_packages():
    graph = _import_graph()
    assert _cycles(graph) == []
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(_package_of(module), set()).update(_package_of(t) for t in targets)
    assert _cycles({p: t - {p} for p, t in packages.items()}) == []


def test_the_model_imports_nothing_of_training_or_the_command_line():
    offending = {
        module: sorted(t for t in targets if t.startswith(("fusion.training", "fusion.cli", "fusion.arguments")))
        for module, targets in _import_graph().items()
        if module.startswith("fusion.experts")
    }
    assert not {module: targets for module, targets in offending.items() if targets}


def test_serving_imports_nothing_of_training_at_run_time():
    code = (
        "import sys, fusion.serving.predictor, fusion.serving.batch; "
        "print(sorted(m for m in sys.modules if m.startswith('fusion.training')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert run.stdout.strip() == "[]"


MAX_MODULE_LINES = 450  # a module longer than this holds more than one thing


def test_no_package_module_is_longer_than_it_should_be():
    lengths = {
        str(path.relative_to(REPO_ROOT)): len(path.read_text().splitlines())
        for package in PACKAGES
        for path in _modules(package)
    }
    assert not {path: n for path, n in lengths.items() if n > MAX_MODULE_LINES}


def test_the_shipped_model_is_found_from_the_serving_package(monkeypatch):
    from fusion.serving.predictor import DEFAULT_CHECKPOINT, resolve_checkpoint

    monkeypatch.delenv("FUSION_CHECKPOINT", raising=False)
    assert DEFAULT_CHECKPOINT == REPO_ROOT / "fusion" / "checkpoints" / "default"
    assert resolve_checkpoint(None) == DEFAULT_CHECKPOINT


@pytest.mark.parametrize("argv", [["--help"], ["predict", "x.mp4", "--window", "0"], ["evaluate", "--help"]])
def test_help_and_argument_errors_import_no_heavy_library(argv):
    code = (
        f"import sys\nimport fusion.cli\ntry:\n    fusion.cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'whisper', 'pandas', 'sklearn') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout + run.stderr
