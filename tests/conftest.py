"""Shared test helpers: tiny seeded models, the embedded model, small splits, spec texts, the CLI (in-process and
as a subprocess), a sweep's MLflow record, a free port. Test modules import helpers from here, never from each other.

Tiers: files marked `slow` (module `pytestmark`) run Ray, subprocess CLIs or servers end to end; the hook below
adds the embedded model's tests and the repeated cases of parametrized tests. `pytest -m "not slow"` is the fast
tier.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from transformers.utils import logging as transformers_logging

from interventions import models
from interventions.context import FamilyRun, TrialContext
from interventions.families import make_split
from interventions.kinds import KINDS

# transformers makes its stderr handler on first use: now, not inside a test whose capsys stream is closed after it
# (its later warnings would then print "--- Logging error ---" into another test's one-line stderr)
transformers_logging.get_logger("transformers")

# Every kind's module (peft and transformers with them) imported now, before any test captures stderr: a logger
# whose handler is made during a capsys test would keep writing to that test's closed stream.
KINDS.names()

REPO = Path(__file__).resolve().parents[1]
INJECT = REPO / "tests" / "inject"  # a sitecustomize.py that crashes one trial's worker, or slows every trial


def pytest_collection_modifyitems(items) -> None:
    """The slow tier, besides the end-to-end files: tests on the embedded model (a real 135M model), and every case
    of a parametrized test but its first (the fast tier runs each matrix of models, methods and architectures once;
    the full suite runs all of it)."""
    seen: set[tuple[str, str]] = set()
    for item in items:
        params = getattr(item, "callspec", None)
        values = params.params if params is not None else {}
        on_embedded = "smollm2" in getattr(item, "fixturenames", ()) or models.EMBEDDED in values.values()
        matrix = (item.nodeid.split("::")[0], getattr(item, "originalname", item.name))
        repeated = params is not None and matrix in seen
        if not on_embedded:
            seen.add(matrix)
        if on_embedded or repeated:
            item.add_marker(pytest.mark.slow)


SMOKE = REPO / "sweeps" / "smoke.yaml"
N_SMOKE = 32  # grid points of smoke.yaml


def spec(kind: str = "steering", name: str = "tiny", *, model: str = "tiny-llama", n_train: int = 4, n_eval: int = 2,
         extra: dict | None = None, **axes) -> str:
    """A spec's YAML: `kind` on a tiny model, seed [0] and family [antonyms] unless `axes` say otherwise; `extra`
    adds top-level keys (resources, execution, ...)."""
    text = {"name": name, "model": model, "kind": kind, "n_train": n_train, "n_eval": n_eval, **(extra or {}),
            "axes": {"seed": [0], "family": ["antonyms"], **axes}}
    return yaml.safe_dump(text, sort_keys=False, default_flow_style=None)


def tiny_steering(name: str) -> str:
    """A steering spec on the tiny Llama that validates in a second and runs in a few (2 grid points)."""
    return spec("steering", name, layer=[0, 2], strength=[0.5], vector_type=["mean_diff"],
                extra={"resources": {"cpu": 2, "gpu": 0}})


@pytest.fixture(scope="session", autouse=True)
def tiny_models_built_once():
    """Each tiny seeded model (tiny-<architecture>) is built once per session, per dtype, and its config and
    tokenizer read once: every later load or describe (a spec's validation) gets a deep copy of the model or the
    config and the same tokenizer. A seeded build is deterministic, so a copy is what a new build would be (same
    weights, same config), at a fraction of the 0.2-1 s a build takes; tests may change their copy freely."""
    inner, built = models._resolve, {}

    def resolve(name, weights, trust_remote_code, dtype=torch.float32):
        if not name.startswith("tiny-") or name not in models.MODELS:
            return inner(name, weights, trust_remote_code, dtype)
        key = (name, weights, trust_remote_code, dtype if weights else None)
        if key not in built:
            built[key] = inner(name, weights, trust_remote_code, dtype)
        made, tokenizer = built[key]
        return copy.deepcopy(made), tokenizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "_resolve", resolve)
        yield


@pytest.fixture(scope="session")
def tiny_llama():
    return models.load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2():
    return models.load("tiny-qwen2")


@pytest.fixture(scope="session")
def smollm2():
    return models.load("smollm2-135m")


@pytest.fixture(scope="session", params=["tiny-llama", "tiny-qwen2"])
def tiny_model(request):
    return models.load(request.param)


def split(model, family="antonyms", seed=0, n_train=8, n_eval=6):
    return make_split(family, seed, model.tokenizer, n_train, n_eval, REPO)


def context(model, family="antonyms", seed=0, others=(), n_train=8, n_eval=6) -> TrialContext:
    run = FamilyRun(model, split(model, family, seed, n_train, n_eval))
    other_runs = [FamilyRun(model, split(model, f, seed, n_train, n_eval)) for f in others]
    return TrialContext(model, seed, run, other_runs)


# --- specs and items ---------------------------------------------------------------------------------------------

# A valid steering spec whose text the bad-input tables edit (their messages name its line numbers).
GOOD = """\
name: bad_input
model: tiny-llama
kind: steering
n_train: 4
n_eval: 2
axes:
  seed: [0]
  layer: [0, 3]
  strength: [1.0]
  vector_type: [mean_diff]
  family: [antonyms]
"""

ITEM = {"prompt": "hot -> cold\nbig ->", "target": " small", "distractor": " large",
        "corrupt_prompt": "hot -> cold\nbig ->"}
ITEM2 = {**ITEM, "prompt": "up -> down\nbig ->", "corrupt_prompt": "up -> down\nbig ->"}


def jsonl(*rows) -> str:
    """A JSONL file's text: dicts as JSON lines, strings as they are."""
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


# --- the CLI ---------------------------------------------------------------------------------------------------------

def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`python -m orchestrator ARGS` in this process: (exit code, stdout, stderr)."""
    from orchestrator.__main__ import main

    monkeypatch.setattr(sys, "argv", ["orchestrator", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_env(**extra: str) -> dict:
    """The environment of a CLI subprocess: the package from this checkout, the default store, plus `extra`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def injected_env(**faults: str) -> dict[str, str]:
    """The environment for `cli` or `start` with tests/inject/sitecustomize.py first on the path of every process of
    the sweep, set by `faults` (its variables)."""
    return {**faults, "PYTHONPATH": os.pathsep.join([str(INJECT), str(REPO)])}


def crash_once_env(marker: Path) -> dict[str, str]:
    """The environment under which the first Ray trial of the sweep kills its worker process, once, and creates
    `marker`/crashed."""
    return injected_env(ATLAS_CRASH_ONCE_DIR=str(marker))


def slow_trials_env(seconds: float) -> dict[str, str]:
    """The environment under which every Ray trial sleeps `seconds` before it runs: a test that signals or kills
    mid-sweep then acts while trials remain, however fast the actors are."""
    return injected_env(ATLAS_TRIAL_DELAY_S=str(seconds))


def cli(cwd: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m orchestrator ARGS` as a subprocess in `cwd`, run to the end."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=cli_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout, check=False)


def swept(folder: Path, name: str, spec_text: str, env: dict | None = None) -> tuple[Path, subprocess.CompletedProcess]:
    """`name`.yaml written into `folder` and swept there by the CLI, which must succeed: (folder, its output)."""
    (folder / f"{name}.yaml").write_text(spec_text)
    done = cli(folder, "sweep", f"{name}.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder, done


def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The CLI in its own process group (output in .stdout), so that everything it started can be found and stopped."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=cli_env(**(env or {})),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def bad_input(tmp_path, monkeypatch, capsys, spec_text: str, files: dict[str, str | bytes] | None = None,
              args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    """`sweep spec.yaml ARGS` in-process on a bad spec (plus `files`, paths relative to it, and `env`): assert exit 2,
    one stderr line and no store; return the line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "spec.yaml").write_text(spec_text)
    for name, content in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run_main(monkeypatch, capsys, "sweep", "spec.yaml", *args)
    err = err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "mlruns").exists()
    return err


# --- the record ------------------------------------------------------------------------------------------------------

def store(where: Path | str) -> MlflowClient:
    """The MLflow store of a sweep run in folder `where` (its default SQLite store), or at tracking URI `where`."""
    return MlflowClient(where if isinstance(where, str) else f"sqlite:///{where / 'mlruns' / 'mlflow.db'}")


def sweep_runs(where: Path | str, name: str = "smoke") -> list:
    """Every run (parents and children, any status) of sweep `name`."""
    client = store(where)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], max_results=10_000)


def role(found: list, which: str, status: str | None = None) -> list:
    """The runs of one role ("parent" or "trial"), of one status if given."""
    return [r for r in found if r.data.tags.get("orchestrator.role") == which
            and (status is None or r.info.status == status)]


def children(found: list, status: str = "FINISHED") -> list:
    return role(found, "trial", status)


def finished_now(cwd: Path) -> list[str]:
    """worker tags of the FINISHED child runs, read-only straight from SQLite (safe while the driver writes)."""
    try:
        with sqlite3.connect(f"file:{cwd / 'mlruns' / 'mlflow.db'}?mode=ro", uri=True) as con:
            return [w for (w,) in con.execute(
                "select w.value from runs r join tags t on r.run_uuid = t.run_uuid join tags w on "
                "r.run_uuid = w.run_uuid where t.key = 'orchestrator.role' and t.value = 'trial' and "
                "w.key = 'orchestrator.worker' and r.status = 'FINISHED'")]
    except sqlite3.Error:
        return []


def free_port() -> int:
    """A loopback port nothing listens on (closed again when this returns)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
