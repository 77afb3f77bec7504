"""A sweep's story: the grid points still to run, the parent run, the Tune rounds (driver.py), the end table.

`run_sweep` takes the points and the tracker the CLI made (expanded and read once per invocation).
"""
from __future__ import annotations

import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from mlflow.exceptions import MlflowException
from rich.console import Console

from orchestrator.cluster import check_resources, ray_session
from orchestrator.cost import actor_bytes
from orchestrator.driver import tune_rounds
from orchestrator.efficiency import Efficiency
from orchestrator.grid import Point, expand
from orchestrator.progress import phase
from orchestrator.screen import Screening
from orchestrator.signals import shielded
from orchestrator.spec import Sweep
from orchestrator.startup import Deferred, preload_env
from orchestrator.store import resolve_uri
from orchestrator.summary import summarise
from orchestrator.sweepfiles import Gathered, checkpoint
from orchestrator.tracking import Lease, StoreLost, Tracker
from orchestrator.view import experiment_url


@dataclass
class Outcome:
    parent: Deferred[tuple[str | None, str | None]]  # (experiment_id, parent_run_id), made while Ray and Tune start
    n_points: int
    skipped: int  # already FINISHED before this invocation
    logged: int = 0
    failed: list[str] = field(default_factory=list)  # trial_ids that failed every retry
    table_path: Path | None = None
    gathered: Gathered = field(default_factory=Gathered)  # per-item values and tensors the trials sent (sweep files)
    efficiency: Efficiency = field(default_factory=Efficiency)  # the trials' model FLOPs and compute seconds
    stopped: bool = False  # Ctrl-C
    checkpoint: Callable[[], None] | None = None  # the sweep files so far onto the parent run (by the writer thread)

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

    lease = Lease(tracker)

    def start() -> tuple[str | None, str | None]:
        try:
            tracker.close_stale()
            parent = tracker.start_parent(n_points, n_todo)
        except (MlflowException, OSError) as exc:  # the store did not answer (after MLflow's retries)
            raise StoreLost(tracker.uri, exc, n_points - (n_points if n_todo is None else n_todo)) from exc
        lease.hold(parent)
        return tracker.experiment_id, parent

    outcome = Outcome(Deferred(start), n_points, n_points - (n_points if n_todo is None else n_todo))
    status = "FAILED"
    try:
        yield outcome
        status = outcome.status
    except KeyboardInterrupt:
        outcome.stopped, status = True, "KILLED"
        raise
    except StoreLost:
        status = None  # nothing can be written: the next invocation closes the parent run
        raise
    finally:
        with shielded():  # a Ctrl-C here still leaves the run closed
            lease.close()
            try:
                parent = outcome.parent_run_id
            except Exception:  # no parent run was made: the block has raised or will raise why
                parent = None
            if parent is not None and status is not None:
                tracker.end_parent(parent, status)


def run_sweep(sweep: Sweep, *, tracking_uri: str | None = None, address: str | None = None,
              console: Console | None = None, top: int = 20, out_dir: Path | None = None,
              points: list[Point] | None = None, tracker: Tracker | None = None,
              done: dict[str, dict] | None = None) -> Outcome:
    """Run every grid point that has no FINISHED run yet, then aggregate the whole grid.

    The CLI passes the points it expanded, its tracker and the ledger it read (`check_ledger`); without them they
    are made here. Ctrl-C (KeyboardInterrupt) stops the trials; the points already finished are written, the
    parent run is marked KILLED, Ray is stopped, and the outcome says `interrupted`.
    """
    console = console or Console()
    points = expand(sweep) if points is None else points
    tracker = tracker or Tracker(resolve_uri(tracking_uri), sweep)
    done = tracker.finished() if done is None else done
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
                preload = preload_env(sweep, len(points if screen else todo), slots)
                stack.enter_context(ray_session(address, True, preload))
            for part in sweep.parts:
                check_resources(part.resources, actor_bytes(sweep, part), part.name)
            with parent_run(tracker, len(points), None if screen else len(todo)) as outcome:
                outcome.checkpoint = lambda: checkpoint(sweep, tracker, points, outcome.parent_run_id,
                                                        outcome.gathered)
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
                if line := outcome.efficiency.line():
                    console.print(line)
                    tracker.log_summary(outcome.parent_run_id, outcome.efficiency.metrics())
    except KeyboardInterrupt:
        if outcome is None:
            raise
        outcome.stopped = True
    if not outcome.interrupted:
        console.print(f"browse: python -m orchestrator ui, then {experiment_url(tracker)}")
    return outcome
