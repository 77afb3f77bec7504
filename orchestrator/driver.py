"""The Tune driver: rounds of Ray Tune runs over the packs of grid points, what each actor asks Ray for, and each
point's share of the work for the progress bar.

Ray Tune runs `worker.run_trial` with `reuse_actors=True`, so each actor process keeps its
model between trials; trials arrive grouped by (seed, family) so actors keep their baselines.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from typing import TYPE_CHECKING

import ray
from ray import tune
from rich.console import Console

from interventions.attribution import ESTIMATES
from orchestrator.cost import actor_bytes, length_scale
from orchestrator.grid import Point, packs
from orchestrator.progress import TrialProgress, point_cost
from orchestrator.recorder import RecordTrials, Retries, Writer
from orchestrator.screen import by_family
from orchestrator.spec import Part, Sweep
from orchestrator.store import ROLE_CHILD, ROLE_ESTIMATE
from orchestrator.tracking import StoreLost, Tracker
from orchestrator.worker import ModelSettings, WorkerSettings, run_trial

if TYPE_CHECKING:
    from orchestrator.runner import Outcome


def _tune(sweep: Sweep, grouped: list[list[Point]], recorder: RecordTrials, storage: str, round_: int = 0, *,
          estimate: str | None = None) -> None:
    """One Ray Tune trial per pack of grid points; reused actors keep the model and baselines. With `estimate`, each
    pack is a (seed, family)'s points, estimated instead (a screen)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own console report off: we draw the progress bar
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the sweep now (the record resumes it)
    _no_trainable_runtime_env()
    spec = sweep.spec
    grid = [[{"trial_id": p.trial_id, "point": p.values, "model": p.model} for p in pack] for pack in grouped]
    wanted = {part.name: actor_resources(sweep, part) for part in sweep.parts}
    # per pack, by its model; Tune unpickles this function per trial: it holds the table only
    resources = lambda config: wanted[config["pack"][0]["model"]]  # noqa: E731
    splits = {part.name: part.splits for part in sweep.parts}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, splits=splits, settings=worker_settings(sweep, estimate)), resources)
    tuner = tune.Tuner(
        trainable,
        param_space={"pack": tune.grid_search(grid)},
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


def _no_trainable_runtime_env() -> None:
    """Tune gives every trainable actor a runtime_env of its own, `{"env_vars": {"PL_DISABLE_FORK": "1"}}` (for
    PyTorch Lightning, which no kind uses), and Ray starts a fresh worker process for an actor with a runtime_env:
    the workers a local Ray starts with, which preload the model (startup.py), would never get an actor. Without
    it Tune's actors land on them. Tune still passes the variables it propagates from this process (AWS keys,
    Ray Train's settings) when they are set."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # another Ray: its actors may start fresh workers, which only costs their start
        return
    class_cache.DEFAULT_ENV_VARS = {}


def worker_settings(sweep: Sweep, estimate: str | None = None) -> WorkerSettings:
    """What every trial of a Tune run reads besides its pack and items."""
    spec = sweep.spec
    models = {part.name: ModelSettings(tuple(part.axes["family"]), max(1, int(part.resources.cpu)),
                                       part.resources.gpu) for part in sweep.parts}
    params = tuple(spec.screen.params().items()) if estimate and spec.screen is not None else ()
    return WorkerSettings(spec.kind, spec.trust_remote_code, spec.execution.prefix_reuse, spec.dtype, sweep.options,
                          models, spec.execution.baseline_cache_mb * 2**20, estimate, params)


def actor_resources(sweep: Sweep, part: Part) -> dict[str, float]:
    """What an actor of one model asks Ray for: CPUs, GPUs and memory (the model's footprint unless the spec gives
    memory_gb), so that a machine never starts more copies of a model than its memory holds."""
    return {"cpu": part.resources.cpu, "gpu": part.resources.gpu, "memory": actor_bytes(sweep, part)}


def _costs(sweep: Sweep, todo: list[Point]) -> dict[str, float]:
    """Each point's share of the work for the progress bar: its layers (and a knock-out's families), times its
    prompts' length (a length axis's long bucket costs many times its short one), times its model's size among the
    sweep's."""
    size = {part.name: part.model.n_params for part in sweep.parts}
    largest = max(size.values())
    scale = {part.name: length_scale(part) for part in sweep.parts}
    out = {}
    for point in todo:
        part, values = sweep.part(point.model), point.values
        cost = point_cost(values, sweep.kind.layer_axes, part.model.n_layers, sweep.spec.execution.prefix_reuse,
                          len(part.axes["family"]) if sweep.kind.uses_other_families else 1)
        length = scale[part.name](values.get("family"), values)
        out[point.trial_id] = cost * length * size[part.name] / largest
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
    if "length" in sweep.axes and not estimate:  # the realised prompt length of each run's bucket (worker.py)
        metrics = (*metrics, "prompt_tokens")
    costs = dict.fromkeys((p.trial_id for p in todo), 1.0) if estimate else _costs(sweep, todo)
    grouped = by_family(todo) if estimate else packs(sweep, todo)
    actors = min(len(grouped), _slots(spec.resources.cpu))
    with TrialProgress(console, label, costs, actors) as progress, \
            tempfile.TemporaryDirectory(prefix="atlas-tune-") as storage, \
            Writer(tracker, lambda: outcome.parent_run_id, progress.advance, outcome.gathered,
                   ROLE_ESTIMATE if estimate else ROLE_CHILD, None if estimate else outcome.checkpoint) as writer:
        try:
            recorder = RecordTrials(writer, {p.trial_id: p for p in todo}, metrics, retries, console.print,
                                    progress.advance, tags, outcome.efficiency)
            outcome.efficiency.start()
            again: list[Point] = []
            for round_ in itertools.count():
                try:
                    _tune(sweep, grouped, recorder, storage, round_, **({"estimate": estimate} if estimate else {}))
                except Exception:
                    if writer.error is not None:
                        break  # said below, once the writer has stopped
                    raise
                if writer.error is not None:
                    break
                again = retries.take_early(todo)
                if not again or round_ == spec.max_failures:
                    break
                grouped = by_family(again) if estimate else packs(sweep, again)
        finally:
            outcome.efficiency.stop()
            try:
                writer.close()  # every finished point in the store, also after Ctrl-C
            finally:
                if not estimate:
                    outcome.logged += writer.written
    if writer.error is not None:
        raise writer.error if isinstance(writer.error, StoreLost) else StoreLost(tracker.uri, writer.error,
                                                                                 outcome.skipped + outcome.logged)
    if retries.summary():
        console.print(f"{label}: {retries.summary()}")
    return retries.failed + [p.trial_id for p in again]


