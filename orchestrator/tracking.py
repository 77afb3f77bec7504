"""MLflow record (DESIGN §7): store, experiment, parent run, one FINISHED child run per trial_id, the UI.

With record.py (which reads a sweep back for reports), the only module that imports mlflow. Only the driver writes; the store doubles as the
resume ledger: a grid point whose trial_id already has a FINISHED run is not run again.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

import orchestrator
from interventions.registry import AtlasError
from orchestrator.grid import Point
from orchestrator.spec import Sweep

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating the SQLite tables
TAG = "orchestrator."
ROLE_PARENT, ROLE_CHILD = "parent", "trial"


def store_dir() -> Path:
    return Path.cwd() / "mlruns"


def resolve_uri(cli_value: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's SQLite store under ./mlruns."""
    uri = cli_value or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_dir() / 'mlflow.db'}"
    if "://" not in uri or uri.startswith("file:"):
        where = "--tracking-uri" if cli_value else "MLFLOW_TRACKING_URI"
        raise AtlasError(f"{where}: {uri!r} is a bare file store, which MLflow 3 rejects; give a database or "
                         "server URI such as sqlite:////abs/path/mlflow.db or http://host:5000")
    return uri


def _default_store(uri: str) -> bool:
    return uri == f"sqlite:///{store_dir() / 'mlflow.db'}"


def check_store(uri: str, cli_value: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast, before anything starts, on a store that cannot answer.

    An http(s) server must answer its /health endpoint within `timeout` (401/403 count: a
    server behind a login answered; a proxy's 404 or 502 does not); MLflow's own client would
    otherwise retry for minutes. A SQLite file's folder must exist (MLflow creates the file,
    never the folder).
    """
    where = "--tracking-uri" if cli_value else "MLFLOW_TRACKING_URI"
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError as exc:
            if exc.code not in (401, 403):
                raise AtlasError(f"{where}: no MLflow server answered at {uri} (HTTP {exc.code} from /health)") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            reason = getattr(reason, "strerror", None) or reason  # 'Connection refused', not '[Errno 111] ...'
            raise AtlasError(f"{where}: no MLflow server answered at {uri} ({reason})") from None
    elif uri.startswith("sqlite:///") and not _default_store(uri):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise AtlasError(f"{where}: folder {folder} of the SQLite store {uri} does not exist")


def _locked(exc: Exception) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


class _RetryOnLock:
    """An MlflowClient whose calls retry, with jittered backoff, when SQLite says 'database is locked'.

    Two sweeps writing one SQLite file take turns at its write lock; SQLite's own busy wait
    (5 s) can run out under load, and MLflow then raises. Every write the Tracker makes is one
    transaction that SQLite rolled back, so repeating it is safe.
    """

    def __init__(self, client: MlflowClient, attempts: int = 12) -> None:
        self._client, self._attempts = client, attempts

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            delay = 0.1
            for attempt in range(self._attempts):
                try:
                    return attr(*args, **kwargs)
                except Exception as exc:  # MlflowException or SQLAlchemy's OperationalError
                    if not _locked(exc) or attempt == self._attempts - 1:
                        raise
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 3.0)

        return call


@contextmanager
def _schema_lock(uri: str) -> Iterator[None]:
    """One process at a time makes its first contact with a SQLite store.

    The first MlflowClient on a new SQLite file creates its tables by running MLflow's
    migrations; two sweeps starting at once would run them interleaved and leave a broken
    schema ("table _alembic_tmp_tags already exists"). An exclusive flock on the store's folder
    serialises that step; later writes are ordinary transactions (see _RetryOnLock).
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; start concurrent sweeps on a new store one after the other
        yield
        return
    fd = os.open(Path(uri.removeprefix("sqlite:///")).parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _driver_id() -> str:
    """host:pid:start-time of this process, so that a later invocation can tell whether it still runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()):.0f}"


def _start_time(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no psutil, or no such process
        return -1.0


def _driver_alive(driver: str) -> bool:
    """True if `driver` (a host:pid:start tag) is a process still running on this machine."""
    host, _, rest = driver.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's driver: nothing to check it with
    now = _start_time(int(pid))
    return now >= 0 and f"{now:.0f}" == started


class Tracker:
    """Reads and writes one sweep's experiment."""

    def __init__(self, uri: str, sweep: Sweep) -> None:
        self.uri, self.sweep = uri, sweep
        self.client, self.experiment_id = None, None
        self.tags = {f"{TAG}kind": sweep.kind.name, f"{TAG}spec_hash": sweep.spec_hash,  # once: hashes every item
                     f"{TAG}version": orchestrator.__version__}
        if not _default_store(uri) or (store_dir() / "mlflow.db").exists():  # reading never creates a store
            self._connect()

    def _connect(self) -> None:
        if self.client is None:
            if _default_store(self.uri):
                store_dir().mkdir(exist_ok=True)
            with _schema_lock(self.uri):  # MlflowClient() creates or migrates a new SQLite file's tables
                try:
                    self.client = _RetryOnLock(MlflowClient(tracking_uri=self.uri))
                    found = self.client.get_experiment_by_name(self.sweep.spec.name)
                except Exception as exc:
                    if self.uri.startswith("sqlite:"):
                        raise
                    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                    raise AtlasError(f"tracking URI {self.uri}: the store did not answer as MLflow ({first})") from None
            if found is not None and found.lifecycle_stage == "deleted":
                raise AtlasError(f"name: experiment {self.sweep.spec.name!r} is deleted in {self.uri}; restore it "
                                 "(mlflow experiments restore) or give the sweep another name")
            self.experiment_id = found.experiment_id if found else None

    def _runs(self, filter_string: str):
        if self.experiment_id is not None:
            yield from search_all(self.client, self.experiment_id, filter_string)

    def finished(self) -> dict[str, dict[str, float]]:
        """trial_id -> metrics of every FINISHED child run (the resume ledger and the aggregate's input)."""
        runs = self._runs(f"attributes.status = 'FINISHED' and tags.`{TAG}role` = '{ROLE_CHILD}'")
        return {r.data.tags[f"{TAG}trial_id"]: dict(r.data.metrics) for r in runs}

    def close_stale(self) -> int:
        """Runs left RUNNING by an interrupted or killed driver become KILLED (never counted as finished)."""
        stale = list(self._runs("attributes.status = 'RUNNING'"))
        for run in stale:
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        return len(stale)

    def last_spec_hash(self) -> str | None:
        """spec_hash of the newest invocation (parent run) of this sweep, if any."""
        if self.experiment_id is None:
            return None
        runs = self.client.search_runs([self.experiment_id], f"tags.`{TAG}role` = '{ROLE_PARENT}'", max_results=1,
                                       order_by=["attributes.start_time DESC"])
        return runs[0].data.tags.get(f"{TAG}spec_hash") if runs else None

    def live_driver(self) -> str | None:
        """host:pid of another driver on this machine still running this sweep (its parent run RUNNING), if any.

        Two drivers of one sweep would each run the grid points the other has not logged yet,
        and the second's `close_stale` would mark the first's runs KILLED. A driver on another
        machine cannot be checked from here.
        """
        parents = self._runs(f"attributes.status = 'RUNNING' and tags.`{TAG}role` = '{ROLE_PARENT}'")
        for run in parents:
            driver = run.data.tags.get(f"{TAG}driver", "")
            if _driver_alive(driver) and driver != _driver_id():
                return driver.rsplit(":", 1)[0]
        return None

    def start_parent(self, n_points: int, n_todo: int) -> str:
        self._connect()
        if self.experiment_id is None:
            location = (store_dir() / "artifacts").as_uri() + f"/{self.sweep.spec.name}" if _default_store(self.uri) else None
            self.experiment_id = self.client.create_experiment(self.sweep.spec.name, artifact_location=location)
        spec = self.sweep.spec
        run = self.client.create_run(self.experiment_id, run_name=f"{spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                     tags={**self.tags, f"{TAG}role": ROLE_PARENT, f"{TAG}driver": _driver_id()})
        params = {"model": spec.model, "dtype": spec.dtype, "kind": spec.kind, "n_train": spec.n_train,
                  "n_eval": spec.n_eval, "grid_size": n_points, "to_run": n_todo, "resources": json.dumps(spec.resources.model_dump())}
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._log_inputs(run.info.run_id)
        return run.info.run_id

    def _log_inputs(self, run_id: str) -> None:
        """The spec as written and every item used, so that a sweep can be re-read without rerunning."""
        self.client.log_artifact(run_id, str(self.sweep.path))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "items.jsonl"
            with path.open("w", encoding="utf-8") as out:
                for (family, seed), split in sorted(self.sweep.splits.items()):
                    for name, items in (("train", split.train), ("eval", split.eval)):
                        for item in items:
                            row = {"family": family, "seed": seed, "split": name, **item.to_dict()}
                            out.write(json.dumps(row) + "\n")
            self.client.log_artifact(run_id, str(path))

    def log_trial(self, parent_id: str, point: Point, metrics: dict[str, float], extra_tags: dict[str, str],
                  steps: dict[str, list[float]] | None = None, artifacts: dict[str, bytes] | None = None) -> str:
        """One child run for one finished grid point: params, tags, metrics (and curves, files), then FINISHED."""
        name = " ".join(f"{k}={v}" for k, v in point.values.items())
        tags = {**self.tags, MLFLOW_PARENT_RUN_ID: parent_id, f"{TAG}role": ROLE_CHILD,
                f"{TAG}trial_id": point.trial_id, **{f"{TAG}{k}": v for k, v in extra_tags.items()}}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = {"model": self.sweep.spec.model, "kind": self.sweep.kind.name, **point.values}
        now = int(time.time() * 1000)
        self.client.log_batch(
            run.info.run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
            + [Metric(k, float(v), now, step) for k, values in (steps or {}).items() for step, v in enumerate(values)],
        )
        if artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                for name, content in artifacts.items():
                    (Path(tmp) / name).write_bytes(content)
                self.client.log_artifacts(run.info.run_id, tmp)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def log_outputs(self, run_id: str, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path))

    def log_summary(self, run_id: str, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def end_parent(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)


def search_all(client, experiment_id: str, filter_string: str, order_by=None):
    """Every run of the experiment that matches, page by page (one search returns at most 10,000)."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=10_000, page_token=token,
                                  order_by=order_by)
        yield from page
        token = page.token
        if not token:
            return


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_ui(uri: str, host: str, port: int) -> int:
    """Run the MLflow UI on the store until interrupted; returns its exit code."""
    if _default_store(uri):
        store_dir().mkdir(exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if _default_store(uri):
        cmd += ["--artifacts-destination", str(store_dir() / "artifacts")]
    return subprocess.call(cmd, env=env)
