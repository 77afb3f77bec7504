"""The sweep's MLflow writer (DESIGN §7): experiment, parent run, one FINISHED child run per trial_id.

Only the driver writes. The store doubles as the resume ledger: a grid point whose trial_id
already has a FINISHED run is not run again (`check_ledger` refuses what would mix two specs or
two drivers). The schema the report reads back is in store.py.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

import orchestrator
from interventions.registry import AtlasError, first_line
from orchestrator.grid import Point
from orchestrator.spec import Sweep
from orchestrator.store import (
    MODEL_FACTS,
    MODELS_TAG,
    ROLE_CHILD,
    ROLE_ESTIMATE,
    ROLE_PARENT,
    TAG,
    RetryOnLock,
    default_store,
    schema_lock,
    search_all,
    seed_sqlite,
    store_dir,
)
from orchestrator.view import set_view

LEASE_TAG = f"{TAG}lease"  # on a RUNNING parent: JSON {driver, expires}, renewed by its driver while it runs
LEASE_ENV = "ATLAS_LEASE_SECONDS"  # how long a lease lasts unrenewed (default 60; renewed every third of it)
HOST_ENV = "ATLAS_DRIVER_HOST"  # the name a driver gives its machine in the record (default: the hostname)


class StoreLost(AtlasError):
    """The tracking store stopped answering mid-sweep (after MLflow's own retries): the sweep stops, exit 1."""

    exit_code = 1

    def __init__(self, uri: str, error: BaseException, logged: int) -> None:
        super().__init__(f"the tracking store {uri} stopped answering ({first_line(error)}); the {logged} points "
                         "logged before are kept: once it answers, rerun the same command to run the rest")


def _host() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV, 60))


def _driver_id() -> str:
    """host:pid:start-time of this process, so that a later invocation can tell whether it still runs."""
    return f"{_host()}:{os.getpid()}:{_start_time(os.getpid()):.0f}"


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
    if host != _host() or not pid.isdigit():
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
        if not default_store(uri) or (store_dir() / "mlflow.db").exists():  # reading never creates a store
            self._connect()

    def _connect(self) -> None:
        if self.client is None:
            if default_store(self.uri):
                store_dir().mkdir(exist_ok=True)
            with schema_lock(self.uri):  # MlflowClient() creates or migrates a new SQLite file's tables
                seed_sqlite(self.uri)
                try:
                    self.client = RetryOnLock(MlflowClient(tracking_uri=self.uri))
                    found = self.client.get_experiment_by_name(self.sweep.spec.name)
                except Exception as exc:
                    if self.uri.startswith("sqlite:"):
                        raise
                    raise AtlasError(f"tracking URI {self.uri}: the store did not answer as MLflow "
                                     f"({first_line(exc)})") from None
            if found is not None and found.lifecycle_stage == "deleted":
                raise AtlasError(f"name: experiment {self.sweep.spec.name!r} is deleted in {self.uri}; restore it "
                                 "(mlflow experiments restore) or give the sweep another name")
            self.experiment_id = found.experiment_id if found else None

    def _runs(self, filter_string: str):
        if self.experiment_id is not None:
            yield from search_all(self.client, self.experiment_id, filter_string)

    def finished(self) -> dict[str, dict[str, float]]:
        """trial_id -> metrics of every FINISHED child run (the resume ledger and the aggregate's input)."""
        return self._finished(ROLE_CHILD)

    def estimated(self) -> dict[str, dict[str, float]]:
        """trial_id -> metrics of every FINISHED estimate run (a screen's; never counted as an exact result)."""
        return self._finished(ROLE_ESTIMATE)

    def _finished(self, role: str) -> dict[str, dict[str, float]]:
        runs = self._runs(f"attributes.status = 'FINISHED' and tags.`{TAG}role` = '{role}'")
        return {r.data.tags[f"{TAG}trial_id"]: dict(r.data.metrics) for r in runs}

    def close_stale(self) -> int:
        """Runs left RUNNING by an interrupted or killed driver become KILLED (never counted as finished)."""
        stale = list(self._runs("attributes.status = 'RUNNING'"))
        for run in stale:
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        return len(stale)

    def _parents(self) -> list:
        """Parent runs, the one used last first (a continued parent keeps its start time: its end time says when)."""
        runs = self._runs(f"tags.`{TAG}role` = '{ROLE_PARENT}'")
        return sorted(runs, key=lambda r: max(r.info.start_time or 0, r.info.end_time or 0), reverse=True)

    def last_spec_hash(self) -> str | None:
        """spec_hash of the newest invocation (parent run) of this sweep, if any."""
        parents = self._parents()
        return parents[0].data.tags.get(f"{TAG}spec_hash") if parents else None

    def live_driver(self, take_over: bool = False) -> str | None:
        """Why this driver may not run the sweep now, if another driver holds it (its parent run RUNNING), else None.

        Two drivers of one sweep would each run the grid points the other has not logged yet, and the second's
        `close_stale` would mark the first's runs KILLED. A driver on this machine is checked by its pid; one on
        another machine by its lease, which it renews while it runs: a live lease is never taken, an expired one
        only with `take_over` (its driver may be alive but cut off from the store)."""
        parents = self._runs(f"attributes.status = 'RUNNING' and tags.`{TAG}role` = '{ROLE_PARENT}'")
        for run in parents:
            driver = run.data.tags.get(f"{TAG}driver", "")
            if driver == _driver_id() or not driver:
                continue
            holder = driver.rsplit(":", 1)[0]
            if driver.partition(":")[0] == _host():
                if _driver_alive(driver):
                    return f"is being run right now by driver {holder}; wait for it or stop it"
                continue  # it died on this machine: its runs are stale
            lease = json.loads(run.data.tags.get(LEASE_TAG, "{}"))
            left = float(lease.get("expires", 0)) - time.time()
            if left > 0:
                return (f"is being run right now by driver {holder} on another machine (its lease, renewed while it "
                        f"runs, ends in {left:.0f} s); wait for it or stop it; if that driver is gone, rerun with "
                        "--take-over once its lease has expired")
            if not take_over:
                return (f"was being run by driver {holder} on another machine, and its lease expired {-left:.0f} s "
                        "ago; if that driver is gone, rerun with --take-over")
        return None

    def renew_lease(self, run_id: str) -> None:
        """This driver holds the parent run for lease_seconds() more."""
        lease = {"driver": _driver_id(), "expires": round(time.time() + lease_seconds(), 1)}
        self.client.set_tag(run_id, LEASE_TAG, json.dumps(lease))

    def newest_parent(self, spec_hash: str | None = None) -> str | None:
        """run_id of the parent run used last (of `spec_hash`, if given), if any."""
        found = [r for r in self._parents() if spec_hash is None or r.data.tags.get(f"{TAG}spec_hash") == spec_hash]
        return found[0].info.run_id if found else None

    def start_parent(self, n_points: int, n_todo: int | None) -> str:
        """The parent run of this spec, continued (RUNNING again) when an earlier invocation left one, else new.

        So a sweep interrupted and rerun keeps every grid point under one parent run. `to_run`
        is a metric with one step per invocation (not logged when a screen decides it later); the view the UI
        opens on is set on the experiment.
        """
        self._connect()
        if self.experiment_id is None:
            location = None  # the server's or the store's default
            if default_store(self.uri):
                location = (store_dir() / "artifacts").as_uri() + f"/{self.sweep.spec.name}"
            self.experiment_id = self.client.create_experiment(self.sweep.spec.name, artifact_location=location)
        set_view(self.client, self.experiment_id, self.sweep)
        spec = self.sweep.spec
        driver = {f"{TAG}driver": _driver_id()}
        run_id = self.newest_parent(self.sweep.spec_hash)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, f"{TAG}driver", driver[f"{TAG}driver"])
            self.renew_lease(run_id)
            step = len(self.client.get_metric_history(run_id, "to_run"))
        else:
            run = self.client.create_run(self.experiment_id, tags={**self.tags, f"{TAG}role": ROLE_PARENT, **driver},
                                         run_name=f"{spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}")
            run_id, step = run.info.run_id, 0
            self.renew_lease(run_id)
            models = ", ".join(part.name for part in self.sweep.parts)
            facts = self.model_facts()
            params = {"model": models, "dtype": spec.dtype, "kind": spec.kind, "n_train": spec.n_train,
                      "n_eval": spec.n_eval, "grid_size": n_points,
                      "resources": json.dumps(spec.resources.model_dump()),
                      **{k: ", ".join(str(f[k]) for f in facts.values()) for k in MODEL_FACTS if k != "dtype"}}
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                                  tags=[RunTag(MODELS_TAG, json.dumps(facts))])
            self._log_inputs(run_id)
        if n_todo is not None:
            self.client.log_batch(run_id, metrics=[Metric("to_run", n_todo, int(time.time() * 1000), step)])
        return run_id

    def model_facts(self) -> dict[str, dict]:
        """Each model's sizes, dtype and weights digest, for the record (the report reads them, never the model)."""
        from interventions.models import weights_digest

        dtype = self.sweep.spec.dtype
        return {part.name: {"n_layers": part.model.n_layers, "d_model": part.model.d_model,
                            "n_heads": part.model.n_heads, "n_params": part.model.n_params, "dtype": dtype,
                            "weights": weights_digest(part.name)} for part in self.sweep.parts}

    def complete_parent(self, run_id: str | None) -> None:
        """A parent left KILLED or FAILED whose grid is now complete (a rerun found nothing to do) becomes FINISHED."""
        if run_id is not None and self.client.get_run(run_id).info.status != "FINISHED":
            self.client.set_terminated(run_id, "FINISHED")

    def _log_inputs(self, run_id: str) -> None:
        """The spec as written and every item used, so that a sweep can be re-read without rerunning."""
        self.client.log_artifact(run_id, str(self.sweep.path))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "items.jsonl"
            with path.open("w", encoding="utf-8") as out:
                for part in self.sweep.parts:
                    model = {"model": part.name} if "model" in self.sweep.axes else {}  # each tokenizer's items
                    for (family, seed), split in sorted(part.splits.items()):
                        for name, items in (("train", split.train), ("eval", split.eval)):
                            for item in items:
                                row = {**model, "family": family, "seed": seed, "split": name, **item.to_dict()}
                                out.write(json.dumps(row) + "\n")
            self.client.log_artifact(run_id, str(path))

    def log_params(self, run_id: str, params: dict) -> None:
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_trial(self, parent_id: str, point: Point, metrics: dict[str, float], extra_tags: dict[str, str],
                  steps: dict[str, list[float]] | None = None, artifacts: dict[str, bytes] | None = None,
                  role: str = ROLE_CHILD) -> str:
        """One child run for one finished grid point: params, tags, metrics (and curves, files), then FINISHED.

        role ROLE_ESTIMATE: a screen's estimate of the point (tagged with the estimate), not its exact result."""
        name = ("estimate " if role == ROLE_ESTIMATE else "") + " ".join(f"{k}={v}" for k, v in point.values.items())
        tags = {**self.tags, MLFLOW_PARENT_RUN_ID: parent_id, f"{TAG}role": role,
                f"{TAG}trial_id": point.trial_id, **{f"{TAG}{k}": v for k, v in extra_tags.items()}}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = {"model": point.model, "kind": self.sweep.kind.name, **point.values}
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


class Lease:
    """The thread that renews the parent run's lease every third of its length while the sweep runs."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, run_id: str) -> None:
        def renew() -> None:
            while not self._stop.wait(lease_seconds() / 3):
                try:
                    self.tracker.renew_lease(run_id)
                except Exception:  # the store is away for a while: the writer says so; the next beat tries again
                    pass

        self._thread = threading.Thread(target=renew, name="lease", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def check_ledger(tracker: Tracker, points: list[Point], resume: bool, console,
                 take_over: bool = False) -> dict[str, dict[str, float]]:
    """The experiment as the resume ledger: refuse what would silently mix two specs or two drivers. Returns the
    ledger read (trial_id -> metrics of every FINISHED child run) for the sweep to go on with."""
    loaded = tracker.sweep
    name = loaded.spec.name
    held = tracker.live_driver(take_over)
    if held:
        raise AtlasError(f"name: sweep {name!r} {held} (two drivers of one sweep would run the same grid points twice)")
    finished = tracker.finished()
    stale = set(finished) - {p.trial_id for p in points}
    if stale and not resume and tracker.last_spec_hash() != loaded.spec_hash:  # news since the last invocation
        raise AtlasError(f"name: experiment {name!r} holds {len(stale)} finished runs that are not grid points of "
                         "this spec (it changed since they ran); pass --resume to keep them out of the table and run "
                         "only the new or changed points, or give the sweep a new name")
    if resume:
        kept = len(finished) - len(stale)
        console.print(f"--resume: {kept} of {len(points)} grid points already finished in {name!r}"
                      + (f"; {len(stale)} finished runs of an earlier spec are kept but not aggregated" if stale
                         else ""))
    return finished
