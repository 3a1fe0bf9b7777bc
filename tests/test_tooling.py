"""The checks a contributor runs: ruff (lint and format) and mypy, as part of the suite."""

from __future__ import annotations

import subprocess
import sys
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


def test_public_names_are_exported() -> None:
    import batchrun.sim

    for name in batchrun.sim.__all__:
        assert hasattr(batchrun.sim, name)
