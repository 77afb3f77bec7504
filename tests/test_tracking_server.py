"""A team MLflow store: sweeps log into a real `mlflow server` on loopback (SQLite or PostgreSQL backend, local
artifacts); two sweeps at once into one store (that server, or one SQLite file) both complete with the right counts;
the server restarted mid-sweep loses and duplicates nothing, and one down past the bounded wait stops the sweep with
exit 1 and a resume that finishes it."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import SMOKE, cli_env, free_port, role, store, sweep_runs, tiny_steering

pytestmark = pytest.mark.slow  # Ray, subprocess CLIs or servers, end to end


PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []  # the server refuses to run as root


class Postgres:
    """A PostgreSQL of Debian's `postgresql` package on a free loopback port, in a folder of its own."""

    def __init__(self) -> None:
        if PG_BIN is None:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="atlas-pg-"))  # not under pytest's tmp: its parents are root's
        self.root.chmod(0o777)
        self.port = free_port()
        self._run([f"{PG_BIN}/initdb", "-D", str(self.root / "data"), "-U", "atlas", "--auth=trust", "-E", "UTF8"])
        self._run([f"{PG_BIN}/pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-w", "-o",
                   f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start"])

    def _run(self, step: list[str]) -> None:
        done = subprocess.run([*AS_POSTGRES, *step], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip()[-300:]
            self.stop()
            pytest.skip(f"PostgreSQL did not start ({Path(step[0]).name}: {why})")

    def database(self, name: str) -> str:
        """A new database; returns its URI (SQLAlchemy reaches it with psycopg 3)."""
        self._run([f"{PG_BIN}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "atlas", name])
        return f"postgresql://atlas@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run([*AS_POSTGRES, f"{PG_BIN}/pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg():
    server = Postgres()
    yield server
    server.stop()


class Server:
    """`mlflow server` on 127.0.0.1 (one port for its life, so it can be stopped and started again)."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend, self.root, self.port = backend, root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "a") as log:  # a file, not a pipe: a full pipe would block the server's request log
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
                 "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    pytest.fail(f"mlflow server did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mlflow_server(request, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite or a PostgreSQL backend and a local artifact folder, as a team
    would run it."""
    root = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        backend = f"sqlite:///{root / 'server.db'}"
    else:
        backend = request.getfixturevalue("pg").database("team")
    server = Server(backend, root)
    server.start()
    yield server
    server.stop()


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
    uri, root = mlflow_server.uri, mlflow_server.root
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


BIG = SMOKE.read_text().replace("seed: [0, 1]", "seed: [0, 1, 2, 3, 4, 5]")


def logged(uri: str, name: str) -> int:
    """Child runs of sweep `name` so far (0 before its experiment exists)."""
    client = store(uri)
    experiment = client.get_experiment_by_name(name)
    return 0 if experiment is None else len(role(client.search_runs([experiment.experiment_id]), "trial"))


def outage(server: Server, cwd: Path, name: str, down: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """A 96-point sweep into the server, which stops once some points are logged and starts again `down` s later
    (never, if None, until the sweep has ended)."""
    spec = cwd / f"{name}.yaml"
    spec.write_text(BIG.replace("name: smoke", f"name: {name}"))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(spec), "--tracking-uri", server.uri],
                            cwd=cwd, env=cli_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 240
        while logged(server.uri, name) < 8:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        server.stop()
        if down is not None:
            time.sleep(down)
            server.start()
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        if server.proc.poll() is not None:
            server.start()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def once_each(uri: str, cwd: Path, name: str) -> None:
    runs = sweep_runs(uri, name)
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in role(runs, "trial", "FINISHED"))
    assert set(ids) == {p.trial_id for p in expand(load_sweep(cwd / f"{name}.yaml"))}, "lost grid points"
    assert max(ids.values()) == 1, "duplicated grid points"
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def pg_server(pg, tmp_path_factory):
    server = Server(pg.database("outages"), tmp_path_factory.mktemp("outages"))
    server.start()
    yield server
    server.stop()


def test_a_server_restarted_mid_sweep_loses_and_duplicates_nothing(pg_server, tmp_path):
    done = outage(pg_server, tmp_path, "restarted", 10)
    assert done.returncode == 0, done.stdout[-3000:]
    once_each(pg_server.uri, tmp_path, "restarted")


def test_a_server_down_past_the_bounded_wait_stops_the_sweep_and_a_rerun_finishes_it(pg_server, tmp_path):
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # gives up in ~3 s
    done = outage(pg_server, tmp_path, "gone", None, quick)
    assert done.returncode == 1, done.stdout[-3000:]
    assert f"error: the tracking store {pg_server.uri} stopped answering" in done.stdout
    assert "once it answers, rerun the same command to run the rest" in done.stdout
    assert "Traceback" not in done.stdout, done.stdout[-3000:]
    again = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(tmp_path / "gone.yaml"),
                            "--tracking-uri", pg_server.uri], cwd=tmp_path, env=cli_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already finished, running" in again.stdout
    once_each(pg_server.uri, tmp_path, "gone")
