"""A team MLflow store: sweeps log into a real `mlflow server` on loopback (SQLite backend, local artifacts), and two
sweeps at once into one store (that server, or one SQLite file) both complete with the right counts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import cli_env, free_port, role, store, sweep_runs, tiny_steering

pytestmark = pytest.mark.slow  # Ray, subprocess CLIs or servers, end to end


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact folder, as a team would run it."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"mlflow server did not start: {proc.stdout.read()[-2000:]}")
            time.sleep(0.5)
    yield uri, root
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def start_sweep(cwd: Path, name: str, uri: str) -> subprocess.Popen:
    spec = cwd / f"{name}.yaml"
    spec.write_text(tiny_steering(name))
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(spec), "--tracking-uri", uri],
                            cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def two_at_once(cwd: Path, uri: str) -> dict[str, str]:
    """Two sweeps started together into one store; both must exit 0. Returns name -> output."""
    procs = {name: start_sweep(cwd, name, uri) for name in ("team_a", "team_b")}
    outs = {name: proc.communicate(timeout=400)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {outs[name][-3000:]}"
    return outs


def check_counts(uri: str, cwd: Path) -> dict:
    """Each sweep: one FINISHED parent, exactly one FINISHED child per grid point, nothing else."""
    parents = {}
    for name in ("team_a", "team_b"):
        found = sweep_runs(uri, name)
        kids = role(found, "trial")
        grid = {p.trial_id for p in expand(load_sweep(cwd / f"{name}.yaml"))}
        ids = Counter(r.data.tags["orchestrator.trial_id"] for r in kids)
        assert set(ids) == grid and set(ids.values()) == {1}, name
        assert {r.info.status for r in kids} == {"FINISHED"}
        (parent,) = role(found, "parent")
        assert parent.info.status == "FINISHED" and parent.data.params["grid_size"] == str(len(grid))
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in kids)
        parents[name] = parent
    return parents


def test_two_sweeps_at_once_log_runs_and_artifacts_to_a_team_server(mlflow_server, tmp_path):
    uri, root = mlflow_server
    two_at_once(tmp_path, uri)
    client = store(uri)
    parents = check_counts(uri, tmp_path)
    for name, parent in parents.items():
        logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {f"{name}.yaml", "items.jsonl", "aggregate.parquet", "aggregate.txt"} <= logged
        # the files went through the server into its artifact folder, not into this machine's ./mlruns
        local = client.download_artifacts(parent.info.run_id, f"{name}.yaml", str(tmp_path))
        assert Path(local).read_text() == (tmp_path / f"{name}.yaml").read_text()
    stored = {p.name for p in (root / "artifacts").rglob("*") if p.is_file()}
    assert {"team_a.yaml", "team_b.yaml", "items.jsonl", "aggregate.parquet"} <= stored
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_two_sweeps_at_once_into_one_new_sqlite_file(tmp_path):
    """Both drivers create the store's tables and write runs into one file at the same time."""
    (tmp_path / "shared").mkdir()
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    two_at_once(tmp_path, uri)
    check_counts(uri, tmp_path)
