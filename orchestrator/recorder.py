"""Tune's trial events -> MLflow: each finished point written once by one writer thread; failures kept for reruns.

`Writer` keeps MLflow's SQLite commits off Tune's scheduling loop. `RecordTrials` is the Tune
callback: a finished pack's points go to the writer, a failed pack's points to `Retries` (run
again on fresh actors when Tune gave up before their retries were spent, failed otherwise). A
result still queued when the driver dies is simply run again on resume: nothing is logged twice.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ray import tune

from orchestrator.efficiency import Efficiency
from orchestrator.grid import Point
from orchestrator.signals import shielded
from orchestrator.store import ROLE_CHILD
from orchestrator.sweepfiles import Gathered
from orchestrator.tracking import StoreLost, Tracker

CHECKPOINT_ENV = "ATLAS_CHECKPOINT_SECONDS"  # how often the writer puts the sweep files so far on the parent run
RESULT_TAGS = ("worker", "node", "gpu_ids", "model_loads", "preloaded", "pack_size", "trial_seconds",
               "peak_rss_mb")  # per-trial facts, as tags


class Writer:
    """One thread that logs finished points to MLflow in arrival order; `close` waits until all are in the store."""

    def __init__(self, tracker: Tracker, parent_id: Callable[[], str],
                 on_written: Callable[[str], None] = lambda trial_id: None, gathered: Gathered | None = None,
                 role: str = ROLE_CHILD, checkpoint: Callable[[], None] | None = None) -> None:
        """parent_id() is asked for at the first write (the parent run may still be in the making); checkpoint()
        is called after a write when new per-item values or tensors came in and CHECKPOINT_ENV seconds (default
        30) have passed since the last one."""
        self.tracker, self.parent_id, self.on_written, self.role = tracker, parent_id, on_written, role
        self.gathered = gathered if gathered is not None else Gathered()  # per-item values, tensors: sweep files
        self.checkpoint, self._every = checkpoint, float(os.environ.get(CHECKPOINT_ENV, 30))
        self._saved_at, self._saved = time.monotonic(), (0, 0)
        self.written = 0
        self.error: Exception | None = None  # why the store took no more runs, if it stopped answering
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
        self._thread.start()

    def put(self, point: Point, metrics: dict[str, float], tags: dict[str, str], extra: dict) -> None:
        self._queue.put((point, metrics, tags, extra))

    def _run(self) -> None:
        parent = None
        while (job := self._queue.get()) is not None:
            if parent is None:
                try:
                    parent = self.parent_id()
                except BaseException as exc:  # no parent run: nothing is logged; the driver re-raises it when it asks
                    return self._give_up(exc if isinstance(exc, StoreLost) else None)
            point, metrics, tags, extra = job
            try:
                self.tracker.log_trial(parent, point, metrics, {**tags, **extra.get("tags", {})},
                                       steps=extra.get("steps", {}), artifacts=extra.get("artifacts", {}),
                                       role=self.role)
            except Exception as exc:  # the store stopped answering (after MLflow's own retries): the sweep stops
                return self._give_up(exc)
            self.gathered.add(point.trial_id, extra)
            self.written += 1
            self.on_written(point.trial_id)
            self._checkpoint()

    def _give_up(self, error: Exception | None) -> None:
        """Log nothing more: note why, and drop what is queued until close()."""
        self.error = error
        while self._queue.get() is not None:
            pass

    def _checkpoint(self) -> None:
        have = (len(self.gathered.items), len(self.gathered.tensors))
        if self.checkpoint is None or have == self._saved or time.monotonic() - self._saved_at < self._every:
            return
        try:
            self.checkpoint()
        except Exception:  # the store is away for a moment: the next checkpoint, or the sweep's end, writes them
            return
        self._saved_at, self._saved = time.monotonic(), have

    def close(self) -> None:
        """Wait until every queued point is in the store (once; later calls return at once)."""
        if self._thread.is_alive():
            self._queue.put(None)
            with shielded():  # Ctrl-C waits for the points already finished: they are not computed again
                self._thread.join()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Retries:
    """Points of failed packs: `early` ones Tune gave up on before their retries were spent, `failed` ones after."""

    max_failures: int
    early: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    recovered: int = 0  # packs Tune restarted after their worker died
    recovered_points: int = 0
    rerun_points: int = 0  # points run again in a new Tune run (Tune gave up on them early)

    def summary(self) -> str | None:
        """One line for the end of the sweep: what was retried and why, if anything was."""
        parts = []
        if self.recovered:
            parts.append(f"{self.recovered} pack{'s' if self.recovered > 1 else ''} ({self.recovered_points} points) "
                         "restarted on a new actor after its worker died")
        if self.rerun_points:
            parts.append(f"{self.rerun_points} points run again on fresh actors (their restart failed too)")
        if self.failed:
            parts.append(f"{len(self.failed)} points failed every retry")
        return "retried: " + "; ".join(parts) if parts else None

    def take_early(self, todo: list[Point]) -> list[Point]:
        """The points to run again in a new Tune run (and forget them here)."""
        early, self.early = set(self.early), []
        self.rerun_points += len(early)
        return [p for p in todo if p.trial_id in early]


class RecordTrials(tune.Callback):
    """Tune callback: finished packs -> the writer, one run per point (never twice); failed packs -> `retries`."""

    def __init__(self, writer: Writer, points: dict[str, Point], metrics: tuple[str, ...], retries: Retries,
                 say: Callable[[str], None], skip: Callable[[str], None],
                 point_tags: dict[str, dict[str, str]] | None = None, efficiency: Efficiency | None = None) -> None:
        self.writer, self.points, self.metrics, self.retries = writer, points, metrics, retries
        self.efficiency = efficiency if efficiency is not None else Efficiency()  # every finished pack's FLOPs
        self.point_tags = point_tags or {}  # trial_id -> tags of its own (a screen's reason to verify it)
        self.say, self.skip = say, skip  # print a line; count a point that will never be written
        self.done: set[str] = set()

    def __getstate__(self) -> dict:
        return {}  # Tune pickles its run config to disk; the live callback stays in this process

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.writer.error is not None:
            raise RuntimeError("the tracking store stopped answering")  # ends Tune's run: nothing more is logged
        result = trial.last_result or {}
        tags = {k: str(result[k]) for k in RESULT_TAGS if k in result}
        self.efficiency.add(result)
        for entry in result.get("results", ()):
            if entry["trial_id"] not in self.done:
                self.done.add(entry["trial_id"])
                metrics = {k: v for k, v in entry["metrics"].items() if k in self.metrics}
                own = self.point_tags.get(entry["trial_id"], {})
                self.writer.put(self.points[entry["trial_id"]], metrics, {**tags, **own}, entry["extra"])

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries.recovered += 1
        self.retries.recovered_points += len(trial.config["pack"])
        self.say(f"{_pack_name(trial)}: worker failed ({_last_error(trial)}); "
                 f"retry {trial.num_failures} of {self.retries.max_failures}")

    def on_trial_error(self, iteration, trials, trial, **info):
        ids = [entry["trial_id"] for entry in trial.config["pack"]]
        if trial.num_failures <= self.retries.max_failures:
            # Tune gives up on a trial that fails while PENDING (restarted onto an actor that is dead too),
            # before its retries are spent: the driver runs these points again on fresh actors.
            self.say(f"{_pack_name(trial)}: failed while restarting ({_last_error(trial)}); it runs again on "
                     "fresh actors")
            self.retries.early.extend(ids)
            return
        self.say(f"{_pack_name(trial)}: failed {trial.num_failures} times, giving up ({_last_error(trial)})")
        self.retries.failed.extend(ids)
        for trial_id in ids:
            self.skip(trial_id)


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
    if not lines:
        return "no error recorded"
    return lines[-1].split(" Some common causes include:")[0][:300]  # Ray's advice on the causes: not the fact
