"""The checks a contributor runs: ruff (lint and format), mypy and the layers contract
(import-linter), as part of the suite."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "batchrun", "tests", "benchmarks", "docs/gen_commands.py"],
        ["ruff", "format", "--check", "batchrun", "tests", "benchmarks", "docs/gen_commands.py"],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(command: list[str]) -> None:
    tool = Path(sys.executable).with_name(command[0])
    proc = subprocess.run(
        [str(tool), *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_layers_hold() -> None:
    """No module imports a layer above its own (the contract in pyproject.toml)."""
    # lint-imports' own entry point, run by this interpreter: it sees this checkout's batchrun
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


def test_every_package_has_its_layer() -> None:
    """A new subpackage is placed in the layers (or the simulator's contract), never outside."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = config["contracts"][0]["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    named |= set(config["contracts"][1]["source_modules"])
    found = {f"batchrun.{path.parent.name}" for path in (REPO / "batchrun").glob("*/__init__.py")}
    assert found <= named, found - named


def test_public_names_are_exported() -> None:
    import batchrun.sim

    for name in batchrun.sim.__all__:
        assert hasattr(batchrun.sim, name)
