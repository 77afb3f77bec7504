"""Driver: run a validated sweep as Ray Tune trials, record each in MLflow, aggregate across seeds.

Ray Tune runs `worker.run_trial` with `reuse_actors=True`, so each actor process keeps its
model between trials; trials arrive grouped by (seed, family) so actors keep their baselines.
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray import tune
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from interventions.registry import AtlasError
from orchestrator.grid import Point, expand, packs
from orchestrator.spec import Sweep
from orchestrator.summary import summarise
from orchestrator.tracking import Tracker, resolve_uri
from orchestrator.worker import run_trial

RESULT_TAGS = ("worker", "node", "gpu_ids", "model_loads", "pack_size", "trial_seconds")  # per-trial facts logged as tags, not metrics


@dataclass
class Outcome:
    experiment_id: str
    parent_run_id: str
    n_points: int
    skipped: int  # already FINISHED before this invocation
    logged: int = 0
    failed: list[str] = field(default_factory=list)  # trial_ids that failed every retry
    interrupted: bool = False
    table_path: Path | None = None


class TrialProgress:
    """A bar with ETA on a terminal; a line every tenth of the trials elsewhere (CI logs, pipes)."""

    def __init__(self, console: Console, name: str, total: int) -> None:
        self.console, self.name, self.total, self.count = console, name, total, 0
        self.start = time.monotonic()
        self.bar = None
        if console.is_terminal:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task(name, total=total)

    def __enter__(self) -> TrialProgress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def advance(self) -> None:
        self.count += 1
        if self.bar:
            self.bar.advance(self.task)
        elif self.count == self.total or self.count % max(1, self.total // 10) == 0:
            elapsed = time.monotonic() - self.start
            eta = elapsed / self.count * (self.total - self.count)
            self.console.print(f"{self.name}: {self.count}/{self.total} trials, {elapsed:.0f} s, eta {eta:.0f} s")


class RecordTrials(tune.Callback):
    """Writes each completed trial to MLflow exactly once (one writer thread), and moves the progress bar.

    The writer thread keeps MLflow's SQLite commits off Tune's scheduling loop. A result
    still queued when the driver dies is simply run again on resume: nothing is logged twice.
    """

    def __init__(self, tracker: Tracker, parent_id: str, points: dict[str, Point], outcome: Outcome,
                 progress: TrialProgress):
        self.tracker, self.parent_id, self.points, self.outcome = tracker, parent_id, points, outcome
        self.progress, self.done = progress, set()
        self.early: list[str] = []  # trial_ids Tune gave up on before their retries were spent
        self.queue: queue.Queue = queue.Queue()
        self.writer = threading.Thread(target=self._write, name="mlflow-writer", daemon=True)
        self.writer.start()

    def __getstate__(self) -> dict:
        return {}  # Tune pickles its run config to disk; the live callback stays in this process

    def _write(self) -> None:
        while (job := self.queue.get()) is not None:
            point, metrics, tags, extra = job
            self.tracker.log_trial(self.parent_id, point, metrics, {**tags, **extra.get("tags", {})},
                                   steps=extra.get("steps", {}), artifacts=extra.get("artifacts", {}))
            self.outcome.logged += 1
            self.progress.advance()

    def close(self) -> None:
        """Wait until every queued trial is in the store."""
        self.queue.put(None)
        self.writer.join()

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        tags = {k: str(result[k]) for k in RESULT_TAGS if k in result}
        for entry in result.get("results", ()):
            if entry["trial_id"] in self.done:
                continue
            self.done.add(entry["trial_id"])
            metrics = {k: v for k, v in entry["metrics"].items() if k in self.tracker.sweep.kind.metrics}
            self.queue.put((self.points[entry["trial_id"]], metrics, tags, entry["extra"]))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.progress.console.print(f"{_pack_name(trial)}: worker failed ({_last_error(trial)}); "
                                    f"retry {trial.num_failures} of {self.tracker.sweep.spec.max_failures}")

    def on_trial_error(self, iteration, trials, trial, **info):
        ids = [entry["trial_id"] for entry in trial.config["pack"]]
        if trial.num_failures <= self.tracker.sweep.spec.max_failures:
            # Tune gives up on a trial that fails while PENDING (restarted onto an actor that is dead too),
            # before its retries are spent: run_sweep runs these points again on fresh actors.
            self.progress.console.print(f"{_pack_name(trial)}: failed while restarting ({_last_error(trial)}); "
                                        "it runs again on fresh actors")
            self.early.extend(ids)
            return
        self.progress.console.print(f"{_pack_name(trial)}: failed {trial.num_failures} times, giving up "
                                    f"({_last_error(trial)})")
        self.outcome.failed.extend(ids)
        for _ in ids:
            self.progress.advance()


def _pack_name(trial) -> str:
    pack = trial.config["pack"]
    return f"trial {pack[0]['trial_id']}" + (f" (+{len(pack) - 1} packed)" if len(pack) > 1 else "")


def _last_error(trial) -> str:
    """The last line of the error Tune recorded for the trial (the exception, or the actor's death)."""
    try:  # the driver-side copy: Tune writes it before the callbacks run, and syncs it to storage later
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:  # a missing error file must not stop the sweep
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error recorded"


def _check_resources(sweep: Sweep) -> None:
    want = sweep.spec.resources
    have = ray.cluster_resources()
    if want.gpu > 0 and have.get("GPU", 0) < want.gpu:
        raise AtlasError(f"resources.gpu: {want.gpu} GPU per trial requested but the Ray cluster has "
                         f"{have.get('GPU', 0):g} GPUs")
    if have.get("CPU", 0) < want.cpu:
        raise AtlasError(f"resources.cpu: {want.cpu} CPUs per trial requested but the Ray cluster has "
                         f"{have.get('CPU', 0):g}")


def _tune(sweep: Sweep, todo: list[Point], recorder: RecordTrials, storage: str, round_: int = 0) -> None:
    """One Ray Tune trial per pack of grid points; reused actors keep the model and baselines."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console report off: we draw the progress bar
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
    spec = sweep.spec
    constants = {"kind": spec.kind, "model": spec.model, "families": sweep.axes["family"],
                 "threads": max(1, int(spec.resources.cpu)), "gpu": spec.resources.gpu,
                 "trust_remote_code": spec.trust_remote_code, "prefix_reuse": spec.execution.prefix_reuse,
                 "dtype": spec.dtype}
    grid = [[{"trial_id": p.trial_id, "point": p.values} for p in pack] for pack in packs(sweep, todo)]
    trainable = tune.with_resources(tune.with_parameters(run_trial, splits=sweep.splits),
                                    {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    tuner = tune.Tuner(
        trainable,
        param_space={**constants, "pack": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            trial_name_creator=lambda t: t.config["pack"][0]["trial_id"],
            trial_dirname_creator=lambda t: t.config["pack"][0]["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{round_}", storage_path=storage, callbacks=[recorder], verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        ),
    )
    tuner.fit()


def run_sweep(sweep: Sweep, *, tracking_uri: str | None = None, address: str | None = None,
              console: Console | None = None, top: int = 20, out_dir: Path | None = None) -> Outcome:
    """Run every grid point that has no FINISHED run yet, then aggregate the whole grid."""
    console = console or Console()
    points = expand(sweep)
    tracker = Tracker(resolve_uri(tracking_uri), sweep)
    done = tracker.finished()
    todo = [p for p in points if p.trial_id not in done]
    started_ray = False
    if todo and not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except ConnectionError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AtlasError(f"--address {address}: no Ray cluster answered ({first})") from None
        started_ray = True
    try:
        if todo:
            _check_resources(sweep)
        tracker.close_stale()
        parent = tracker.start_parent(len(points), len(todo))
        outcome = Outcome(tracker.experiment_id, parent, len(points), len(points) - len(todo))
        status = "FAILED"
        try:
            if todo:
                console.print(f"{sweep.spec.name}: {len(points)} grid points, {len(points) - len(todo)} already "
                              f"finished, running {len(todo)}")
                with TrialProgress(console, sweep.spec.name, len(todo)) as progress, \
                        tempfile.TemporaryDirectory(prefix="atlas-tune-") as storage:
                    recorder = RecordTrials(tracker, parent, {p.trial_id: p for p in todo}, outcome, progress)
                    try:
                        _tune(sweep, todo, recorder, storage)
                        for round_ in range(1, sweep.spec.max_failures + 1):  # at most max_failures more rounds
                            early = set(recorder.early)
                            again = [p for p in todo if p.trial_id in early]
                            if not again:
                                break
                            recorder.early.clear()
                            _tune(sweep, again, recorder, storage, round_)
                        outcome.failed.extend(recorder.early)
                    finally:
                        recorder.close()
            outcome.interrupted = outcome.logged + len(outcome.failed) < len(todo)
            outcome.table_path = summarise(sweep, tracker, points, parent, console, top, out_dir)
            status = "KILLED" if outcome.interrupted else "FAILED" if outcome.failed else "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracker.end_parent(parent, status)
    finally:
        if started_ray:
            ray.shutdown()
    return outcome
