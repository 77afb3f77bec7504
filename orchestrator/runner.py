"""Driver: run a validated sweep as Ray Tune trials, record each in MLflow, aggregate across seeds.

Ray Tune runs `worker.run_trial` with `reuse_actors=True`, so each actor process keeps its
model between trials; trials arrive grouped by (seed, family) so actors keep their baselines.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import ray
from ray import tune
from rich.console import Console

from orchestrator.cluster import check_resources, ray_session
from orchestrator.grid import Point, expand, packs
from orchestrator.progress import TrialProgress, phase, point_cost
from orchestrator.recorder import RecordTrials, Retries, Writer
from orchestrator.signals import shielded
from orchestrator.spec import Sweep
from orchestrator.store import resolve_uri
from orchestrator.summary import summarise
from orchestrator.sweepfiles import Gathered
from orchestrator.tracking import Tracker
from orchestrator.view import experiment_url
from orchestrator.worker import run_trial


@dataclass
class Outcome:
    experiment_id: str | None
    parent_run_id: str | None  # None: nothing ran and no earlier parent run exists
    n_points: int
    skipped: int  # already FINISHED before this invocation
    logged: int = 0
    failed: list[str] = field(default_factory=list)  # trial_ids that failed every retry
    table_path: Path | None = None
    gathered: Gathered = field(default_factory=Gathered)  # per-item values and tensors the trials sent (sweep files)
    stopped: bool = False  # Ctrl-C

    @property
    def interrupted(self) -> bool:
        """Ctrl-C, or some points to run were neither logged nor given up on (a lost driver)."""
        return self.stopped or self.skipped + self.logged + len(self.failed) < self.n_points

    @property
    def status(self) -> str:
        return "KILLED" if self.interrupted else "FAILED" if self.failed else "FINISHED"


def _tune(sweep: Sweep, todo: list[Point], recorder: RecordTrials, storage: str, round_: int = 0) -> None:
    """One Ray Tune trial per pack of grid points; reused actors keep the model and baselines."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console report off: we draw the progress bar
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the sweep now (the record resumes it)
    spec = sweep.spec
    constants = {"kind": spec.kind, "model": spec.model, "families": sweep.axes["family"],
                 "threads": max(1, int(spec.resources.cpu)), "gpu": spec.resources.gpu,
                 "trust_remote_code": spec.trust_remote_code, "prefix_reuse": spec.execution.prefix_reuse,
                 "dtype": spec.dtype, "options": sweep.options}
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


def _slots(cpu: float) -> int:
    """How many trials the cluster runs at once (for the progress line)."""
    try:
        return max(1, int(ray.cluster_resources().get("CPU", 1) // cpu))
    except Exception:  # no Ray here (a test's stand-in for Tune)
        return 1


def tune_rounds(sweep: Sweep, todo: list[Point], tracker: Tracker, outcome: Outcome, console: Console) -> None:
    """Tune runs of the points to do; points Tune gave up on early run again, at most max_failures more rounds."""
    retries = Retries(sweep.spec.max_failures)
    spec = sweep.spec
    costs = {p.trial_id: point_cost(p.values, sweep.kind.layer_axes, sweep.model.n_layers, spec.execution.prefix_reuse)
             for p in todo}
    actors = min(len(packs(sweep, todo)), _slots(spec.resources.cpu))
    again = todo
    with TrialProgress(console, spec.name, costs, actors) as progress, \
            tempfile.TemporaryDirectory(prefix="atlas-tune-") as storage, \
            Writer(tracker, outcome.parent_run_id, progress.advance, outcome.gathered) as writer:
        try:
            recorder = RecordTrials(writer, {p.trial_id: p for p in todo}, sweep.kind.metrics, retries, console.print,
                                    progress.advance)
            for round_ in itertools.count():
                _tune(sweep, again, recorder, storage, round_)
                again = retries.take_early(todo)
                if not again or round_ == spec.max_failures:
                    break
        finally:
            try:
                writer.close()  # every finished point in the store, also after Ctrl-C
            finally:
                outcome.logged += writer.written
    outcome.failed += retries.failed + [p.trial_id for p in again]


@contextmanager
def parent_run(tracker: Tracker, n_points: int, n_todo: int) -> Iterator[Outcome]:
    """The sweep's parent run (continued when an earlier invocation of the same spec left one), ended FINISHED,
    KILLED (interrupted) or FAILED (an error, failed points)."""
    parent, status = None, "FAILED"
    try:
        with shielded():  # a Ctrl-C here still leaves the run closed (KILLED) below
            parent = tracker.start_parent(n_points, n_todo)
        outcome = Outcome(tracker.experiment_id, parent, n_points, n_points - n_todo)
        try:
            yield outcome
            status = outcome.status
        except KeyboardInterrupt:
            outcome.stopped = True
            raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if parent is not None:
            with shielded():
                tracker.end_parent(parent, status)


def run_sweep(sweep: Sweep, *, tracking_uri: str | None = None, address: str | None = None,
              console: Console | None = None, top: int = 20, out_dir: Path | None = None) -> Outcome:
    """Run every grid point that has no FINISHED run yet, then aggregate the whole grid.

    Ctrl-C (KeyboardInterrupt) stops the trials; the points already finished are written, the
    parent run is marked KILLED, Ray is stopped, and the outcome says `interrupted`.
    """
    console = console or Console()
    points = expand(sweep)
    tracker = Tracker(resolve_uri(tracking_uri), sweep)
    done = tracker.finished()
    todo = [p for p in points if p.trial_id not in done]
    if not todo:  # nothing to run: no Ray, no new parent run; the table again
        console.print(f"{sweep.spec.name}: all {len(points)} grid points already finished; nothing to run")
        tracker.close_stale()
        own = tracker.newest_parent(sweep.spec_hash)
        parent = own or tracker.newest_parent()
        outcome = Outcome(tracker.experiment_id, parent, len(points), len(points))
        outcome.table_path = summarise(sweep, tracker, points, parent, console, top, out_dir)
        tracker.complete_parent(own)
        return outcome
    outcome = None
    try:
        with ExitStack() as stack:
            where = f"joining the Ray cluster at {address}" if address else "starting a local Ray"
            with phase(console, where):
                stack.enter_context(ray_session(address))
            check_resources(sweep.spec.resources)
            tracker.close_stale()
            with parent_run(tracker, len(points), len(todo)) as outcome:
                console.print(f"{sweep.spec.name}: {len(points)} grid points, {len(points) - len(todo)} already "
                              f"finished, running {len(todo)}")
                tune_rounds(sweep, todo, tracker, outcome, console)
                outcome.table_path = summarise(sweep, tracker, points, outcome.parent_run_id, console, top, out_dir,
                                               outcome.gathered)
    except KeyboardInterrupt:
        if outcome is None:
            raise
        outcome.stopped = True
    if not outcome.interrupted:
        console.print(f"browse: python -m orchestrator ui, then {experiment_url(tracker)}")
    return outcome
