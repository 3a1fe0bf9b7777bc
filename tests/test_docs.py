"""The documentation site: it builds with `mkdocs build --strict` (no broken link or anchor),
its commands page is the parser's current help, its job-file page names every key, and the
README's links and commands still hold."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pydantic

from batchrun.config import job as job_module

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=110
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    # --strict: a page missing from the nav, a link to no page, an anchor that is not there
    # or an API name mkdocstrings cannot find fails the build.
    site = tmp_path / "site"
    result = _run(
        "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (site / "index.html").is_file()
    api = (site / "python-api" / "index.html").read_text(encoding="utf-8")
    for name in ("batchrun.run", "batchrun.map", "batchrun.RunResult", "batchrun.ray.ChatStage"):
        assert f'id="{name}"' in api, name
    assert (site / "eval-report.png").is_file()


def test_the_commands_page_is_the_parsers_help() -> None:
    result = _run("-m", "cogapp", "--check", "docs/commands.md")
    assert result.returncode == 0, (
        "docs/commands.md is not what the command line's parser says now; regenerate it with "
        "`python -m cogapp -r docs/commands.md` from the repository's root and commit it\n"
        + result.stdout
        + result.stderr
    )


def _sections() -> dict[str, type[pydantic.BaseModel]]:
    spec = job_module._JobModel.model_fields
    sections: dict[str, type[pydantic.BaseModel]] = {}
    for name, field in spec.items():
        for kind in (field.annotation, *getattr(field.annotation, "__args__", ())):
            for inner in (kind, *getattr(kind, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, pydantic.BaseModel):
                    sections[name] = inner
    return sections


def test_the_job_file_page_names_every_key() -> None:
    page = (DOCS / "job-file.md").read_text(encoding="utf-8")
    reference = page.split("## Every key")[1]
    sections = _sections()
    assert {"input", "prompt", "endpoint", "limits", "output", "cost", "engine"} <= set(sections)
    missing = [
        f"{section}.{key}"
        for section, model in sections.items()
        for key in model.model_fields
        if f"`{key}`" not in reference and f"`{key}." not in reference
    ]
    top = [k for k in job_module._JobModel.model_fields if k not in sections]
    missing += [k for k in top if f"`{k}`" not in reference and f"`[{k}]`" not in reference]
    assert not missing, f"keys of batchrun/config/job.py with no row in docs/job-file.md: {missing}"


def test_the_readme_links_to_pages_that_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]*))?\)", readme)
    assert len(links) >= 10
    for link, anchor in links:
        assert (REPO / link).is_file(), link
        if anchor:  # GitHub's anchor of a heading: lower case, punctuation dropped, - for spaces
            headings = re.findall(r"(?m)^#+ (.+)$", (REPO / link).read_text(encoding="utf-8"))
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{link}#{anchor}"


def test_the_readme_second_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci in readme, f"README's second command differs from .ci/run's: {ci}"
    first = (
        "python3 -m venv .venv && .venv/bin/pip install -q . && "
        ".venv/bin/batchrun run jobs/demo.toml"
    )
    assert first in readme
    assert shlex.split(first)[-1] == "jobs/demo.toml" and (REPO / "jobs" / "demo.toml").is_file()
