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

from interventions.attribution import ESTIMATES
from orchestrator.cluster import check_resources, ray_session
from orchestrator.cost import actor_bytes
from orchestrator.grid import Point, expand, packs
from orchestrator.progress import TrialProgress, phase, point_cost
from orchestrator.recorder import RecordTrials, Retries, Writer
from orchestrator.screen import Screening, by_family
from orchestrator.signals import shielded
from orchestrator.spec import Sweep
from orchestrator.startup import Deferred, preload_env
from orchestrator.store import ROLE_CHILD, ROLE_ESTIMATE, resolve_uri
from orchestrator.summary import summarise
from orchestrator.sweepfiles import Gathered
from orchestrator.tracking import Tracker
from orchestrator.view import experiment_url
from orchestrator.worker import run_trial


@dataclass
class Outcome:
    parent: Deferred[tuple[str | None, str | None]]  # (experiment_id, parent_run_id), made while Ray and Tune start
    n_points: int
    skipped: int  # already FINISHED before this invocation
    logged: int = 0
    failed: list[str] = field(default_factory=list)  # trial_ids that failed every retry
    table_path: Path | None = None
    gathered: Gathered = field(default_factory=Gathered)  # per-item values and tensors the trials sent (sweep files)
    stopped: bool = False  # Ctrl-C

    @property
    def experiment_id(self) -> str:
        return self.parent.result()[0]

    @property
    def parent_run_id(self) -> str:
        return self.parent.result()[1]

    @property
    def interrupted(self) -> bool:
        """Ctrl-C, or some points to run were neither logged nor given up on (a lost driver)."""
        return self.stopped or self.skipped + self.logged + len(self.failed) < self.n_points

    @property
    def status(self) -> str:
        return "KILLED" if self.interrupted else "FAILED" if self.failed else "FINISHED"


def _tune(sweep: Sweep, todo: list[Point], recorder: RecordTrials, storage: str, round_: int = 0, *,
          estimate: str | None = None) -> None:
    """One Ray Tune trial per pack of grid points; reused actors keep the model and baselines. With `estimate`, one
    trial per (seed, family) estimates its points instead (a screen)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console report off: we draw the progress bar
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the sweep now (the record resumes it)
    spec = sweep.spec
    constants = {"kind": spec.kind, "model": spec.model, **_model_settings(sweep),
                 "trust_remote_code": spec.trust_remote_code, "prefix_reuse": spec.execution.prefix_reuse,
                 "dtype": spec.dtype, "options": sweep.options, "estimate": estimate}
    splits = sweep.splits
    if sweep.parts:  # a model axis: each pack's model's settings and items (worker.of_model)
        constants["models"] = {part.spec.model: _model_settings(part) for part in sweep.parts}
        splits = {part.spec.model: part.splits for part in sweep.parts}
    grouped = by_family(todo) if estimate else packs(sweep, todo)
    grid = [[{"trial_id": p.trial_id, "point": p.values} for p in pack] for pack in grouped]
    wanted = {part.spec.model: actor_resources(part) for part in sweep.models}
    if len(sweep.models) > 1:  # per pack, by its model; Tune unpickles this function per trial: it holds the table only
        resources = lambda config: wanted[config["pack"][0]["point"]["model"]]  # noqa: E731
    else:
        resources = wanted[spec.model]
    trainable = tune.with_resources(tune.with_parameters(run_trial, splits=splits), resources)
    tuner = tune.Tuner(
        trainable,
        param_space={**constants, "pack": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            trial_name_creator=lambda t: t.config["pack"][0]["trial_id"],
            trial_dirname_creator=lambda t: t.config["pack"][0]["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{'estimate-' if estimate else ''}{round_}", storage_path=storage, callbacks=[recorder],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        ),
    )
    tuner.fit()


def _model_settings(sweep: Sweep) -> dict:
    return {"families": sweep.axes["family"], "threads": max(1, int(sweep.resources.cpu)),
            "gpu": sweep.resources.gpu}


def actor_resources(sweep: Sweep) -> dict[str, float]:
    """What an actor of this one-model sweep asks Ray for: CPUs, GPUs and memory (the model's footprint unless the
    spec gives memory_gb), so that a machine never starts more copies of a model than its memory holds."""
    want = sweep.resources
    return {"cpu": want.cpu, "gpu": want.gpu, "memory": actor_bytes(sweep)}


def _costs(sweep: Sweep, todo: list[Point]) -> dict[str, float]:
    """Each point's share of the work for the progress bar: its layers, times its model's size among the sweep's."""
    size = {p.spec.model: p.model.n_params for p in sweep.parts}
    largest = max(size.values(), default=1)
    out = {}
    for point in todo:
        part = sweep.of(point.values)
        cost = point_cost(point.values, sweep.kind.layer_axes, part.model.n_layers, sweep.spec.execution.prefix_reuse)
        out[point.trial_id] = cost * size.get(part.spec.model, largest) / largest
    return out


def _slots(cpu: float) -> int:
    """How many trials the cluster runs at once (for the progress line)."""
    try:
        return max(1, int(ray.cluster_resources().get("CPU", 1) // cpu))
    except Exception:  # no Ray here (a test's stand-in for Tune)
        return 1


def tune_rounds(sweep: Sweep, todo: list[Point], tracker: Tracker, outcome: Outcome, console: Console, *,
                estimate: str | None = None, tags: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Tune runs of the points to do; points Tune gave up on early run again, at most max_failures more rounds.
    With `estimate`, the points are estimated (a screen) and logged as estimate runs. Exact points logged are
    counted on the outcome, also after Ctrl-C. Returns the trial_ids that failed every retry."""
    retries = Retries(sweep.spec.max_failures)
    spec = sweep.spec
    label = f"{spec.name} ({estimate} estimates)" if estimate else spec.name
    metrics = ESTIMATES.get(estimate).metrics if estimate else sweep.kind.metrics
    costs = dict.fromkeys((p.trial_id for p in todo), 1.0) if estimate else _costs(sweep, todo)
    actors = min(len(by_family(todo) if estimate else packs(sweep, todo)), _slots(spec.resources.cpu))
    again = todo
    with TrialProgress(console, label, costs, actors) as progress, \
            tempfile.TemporaryDirectory(prefix="atlas-tune-") as storage, \
            Writer(tracker, lambda: outcome.parent_run_id, progress.advance, outcome.gathered,
                   ROLE_ESTIMATE if estimate else ROLE_CHILD) as writer:
        try:
            recorder = RecordTrials(writer, {p.trial_id: p for p in todo}, metrics, retries, console.print,
                                    progress.advance, tags)
            for round_ in itertools.count():
                _tune(sweep, again, recorder, storage, round_, **({"estimate": estimate} if estimate else {}))
                again = retries.take_early(todo)
                if not again or round_ == spec.max_failures:
                    break
        finally:
            try:
                writer.close()  # every finished point in the store, also after Ctrl-C
            finally:
                if not estimate:
                    outcome.logged += writer.written
    return retries.failed + [p.trial_id for p in again]


def screened(screen: Screening, tracker: Tracker, outcome: Outcome, console: Console) -> list[Point]:
    """A screen: estimate the grid points that have no estimate yet, then the verify set's points still to run."""
    failed: list[str] = []
    if screen.missing:
        failed = tune_rounds(screen.sweep, screen.missing, tracker, outcome, console,
                             estimate=screen.sweep.spec.screen.estimate)
    return screen.select(outcome, console, failed)


@contextmanager
def parent_run(tracker: Tracker, n_points: int, n_todo: int | None) -> Iterator[Outcome]:
    """The sweep's parent run (continued when an earlier invocation of the same spec left one), ended FINISHED,
    KILLED (interrupted) or FAILED (an error, failed points).

    Stale runs are closed and the parent run is made in a thread (startup.py): the block starts Tune meanwhile, and
    the first use of the outcome's ids waits for it. n_todo None: not known yet (a screen decides it, and fills in
    the outcome's counts)."""

    def start() -> tuple[str | None, str | None]:
        tracker.close_stale()
        parent = tracker.start_parent(n_points, n_todo)
        return tracker.experiment_id, parent

    outcome = Outcome(Deferred(start), n_points, n_points - (n_points if n_todo is None else n_todo))
    status = "FAILED"
    try:
        yield outcome
        status = outcome.status
    except KeyboardInterrupt:
        outcome.stopped, status = True, "KILLED"
        raise
    finally:
        with shielded():  # a Ctrl-C here still leaves the run closed
            try:
                parent = outcome.parent_run_id
            except Exception:  # no parent run was made: the block has raised or will raise why
                parent = None
            if parent is not None:
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
    screen = Screening(sweep, points, tracker, done) if sweep.spec.screen else None
    if not (screen.needed if screen else todo):  # nothing to run: no Ray, no new parent run; the table again
        console.print(f"{sweep.spec.name}: all {len(points)} grid points already "
                      + (f"estimated and the {len(screen.verify)} to verify finished" if screen else "finished")
                      + "; nothing to run")
        tracker.close_stale()
        own = tracker.newest_parent(sweep.spec_hash)
        parent = own or tracker.newest_parent()
        outcome = Outcome(Deferred(lambda: (tracker.experiment_id, parent)), len(points), len(points))
        outcome.table_path = summarise(sweep, tracker, points, parent, console, top, out_dir)
        if screen and parent:
            screen.report(console, parent)
        tracker.complete_parent(own)
        return outcome
    outcome = None
    try:
        with ExitStack() as stack:
            slots = stack.enter_context(tempfile.TemporaryDirectory(prefix="atlas-preload-"))
            where = f"joining the Ray cluster at {address}" if address else "starting a local Ray"
            with phase(console, where):
                preload = preload_env(sweep.models[0], len(points if screen else todo), slots)
                stack.enter_context(ray_session(address, True, preload))
            for part in sweep.models:
                check_resources(part.resources, actor_bytes(part), part.spec.model)
            with parent_run(tracker, len(points), None if screen else len(todo)) as outcome:
                if screen:
                    todo = screened(screen, tracker, outcome, console)
                else:
                    console.print(f"{sweep.spec.name}: {len(points)} grid points, {len(points) - len(todo)} already "
                                  f"finished, running {len(todo)}")
                if todo:
                    outcome.failed += tune_rounds(sweep, todo, tracker, outcome, console,
                                                  tags=screen.tags if screen else None)
                outcome.table_path = summarise(sweep, tracker, points, outcome.parent_run_id, console, top, out_dir,
                                               outcome.gathered)
                if screen:
                    screen.report(console, outcome.parent_run_id)
    except KeyboardInterrupt:
        if outcome is None:
            raise
        outcome.stopped = True
    if not outcome.interrupted:
        console.print(f"browse: python -m orchestrator ui, then {experiment_url(tracker)}")
    return outcome
