"""Every command of the README and docs/ runs as written: ```bash and ```python blocks in order, one scratch folder
per page (with a copy of sweeps/); ```bash no-test blocks use only known programs and their sweeps validate."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, free_port

pytestmark = pytest.mark.slow  # subprocess CLIs, Ray and an MLflow server, end to end

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
# what a command in a no-test block may start with
KNOWN = {"python", "python3", "pip", "ray", "ruff", "sudo", "mlflow", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", "."}
UI = re.compile(r"^python -m orchestrator ui\b([^#\n]*)(#.*)?$", re.M)


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(language, tags, body) of every fenced block, in order."""
    return [(m[1], m[2].strip(), m[3]) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def commands(body: str) -> list[str]:
    """Logical command lines of a shell block: continuations joined, comments dropped, `&&` chains split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&")]
    return out


def ui_checked(body: str) -> str:
    """`python -m orchestrator ui` serves until stopped: start it on a free port, wait for its address, SIGTERM it."""
    def check(m: re.Match) -> str:
        line = f"python -m orchestrator ui {m[1].strip()} --port {free_port()}"
        return (f"({line} > ui.out 2>&1 & pid=$!; for i in $(seq 180); do grep -q 'MLflow UI: http' ui.out && break; "
                f"sleep 1; done; kill -TERM $pid; wait $pid || true; cat ui.out; grep -q 'MLflow UI: http' ui.out)")
    return UI.sub(check, body)


def scratch(tmp_path: Path) -> tuple[Path, dict]:
    shutil.copytree(REPO / "sweeps", tmp_path / "sweeps")
    shutil.copytree(REPO / "studies", tmp_path / "studies")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"  # `python` in the pages is this interpreter (a symlink would lose its venv)
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = cli_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return tmp_path, env


@pytest.mark.parametrize("page", PAGES, ids=[p.name if p.parent == REPO else f"docs/{p.name}" for p in PAGES])
def test_every_command_of_the_page_runs_as_written(page, tmp_path):
    cwd, env = scratch(tmp_path)
    ran = 0
    for lang, tags, body in blocks(page):
        if lang == "bash" and "no-test" not in tags:
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", ui_checked(body)], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=900)
        elif lang == "python" and "no-test" not in tags:
            done = subprocess.run([sys.executable, "-c", body], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=300)
        else:
            continue
        ran += 1
        assert done.returncode == 0, f"{page.name}:\n{body}\n--- out:\n{done.stdout[-3000:]}\n--- err:\n" \
                                     f"{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
    if ran == 0:
        assert any("no-test" in tags for _, tags, _ in blocks(page)) or not blocks(page), page


@pytest.mark.parametrize("page", PAGES, ids=[p.name if p.parent == REPO else f"docs/{p.name}" for p in PAGES])
def test_commands_that_are_not_run_use_known_programs_and_their_sweeps_validate(page, tmp_path):
    cwd, env = scratch(tmp_path)
    for _, _, body in (b for b in blocks(page) if b[0] == "bash" and "no-test" in b[1]):
        for command in commands(body):
            assert command.split()[0] in KNOWN, f"{page.name}: {command}"
        for spec in re.findall(r"python -m orchestrator sweep (\S+)", body):
            done = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", spec, "--dry-run"], cwd=cwd,
                                  env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0 and "grid points" in done.stdout, f"{page.name}: {spec}: {done.stderr}"


def test_the_readme_is_short_and_cites_no_internal_notes():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for page in PAGES:
        body = page.read_text(encoding="utf-8")
        assert "DESIGN.md" not in body and "NOTES.md" not in body, page.name
        for target in re.findall(r"\]\(((?:docs/)?[\w.-]+\.md)(?:#[\w-]+)?\)", body):
            base = page.parent if page.parent.name == "docs" or not target.startswith("docs/") else REPO
            assert (base / target).is_file() or target.split("/")[-1] in LATER, f"{page.name}: link {target}"


LATER = {"models.md", "performance.md", "steering.md"}  # written by the model-packs, performance and steering work
