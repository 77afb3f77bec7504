"""Time to first result: what a sweep overlaps while it starts.

- `Deferred` runs the MLflow set-up (closing stale runs, the experiment and the parent run: seconds on a new
  SQLite store, whose tables MLflow creates by migrations) in a thread while Ray starts and Tune places its
  actors; the writer waits for it only when the first result is ready to be logged.
- `preload_env` makes the Ray workers a local Ray starts load the sweep's model as they start: the raylet
  starts one Python worker per CPU when Ray starts, Tune's actors are placed on those workers, and every worker
  runs Ray's worker-process setup hook (`worker_process_setup_hook`, passed here through the environment the
  raylet inherits, since a runtime_env would make Ray start new workers instead). So imports and the model
  load run while the driver is still starting Ray and Tune. At most one worker per actor the sweep will have
  preloads (slot files); CPU sweeps only (a worker has no GPU until an actor gets one). A worker whose preload
  fails just loads the model itself, as without preloading.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Callable, Generic, TypeVar

V = TypeVar("V")
PRELOAD = "ATLAS_PRELOAD"  # JSON: {model, trust_remote_code, dtype, slots, dir}
SETUP_HOOK = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
preloaded = False  # in a Ray worker: its setup hook loaded the model (each trial reports it)


class Deferred(Generic[V]):
    """fn() computed in a thread from now on; `result()` waits for it and re-raises what it raised."""

    def __init__(self, fn: Callable[[], V]) -> None:
        self._value: V | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="deferred", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], V]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # re-raised in whoever asks for the result
            self._error = exc

    def result(self) -> V:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def preload_env(sweep, n_trials: int, folder: str) -> dict[str, str]:
    """Environment for a local Ray whose workers preload the sweep's first model, at most one per
    actor the sweep will have: CPUs and memory (Ray's is ~70% of what is available) over what an actor asks for.
    Nothing for GPU sweeps or no trials."""
    import psutil

    from orchestrator.cost import actor_bytes, actors

    spec, first = sweep.spec, sweep.parts[0]
    memory = int(0.7 * psutil.virtual_memory().available // actor_bytes(sweep, first))
    slots = min(actors(first.resources, n_trials), memory)
    if first.resources.gpu > 0 or slots < 1:
        return {}
    settings = {"model": first.name, "trust_remote_code": spec.trust_remote_code, "dtype": sweep.precisions[0],
                "slots": slots, "dir": folder}  # the first trial's precision
    return {SETUP_HOOK: "orchestrator.startup.preload", PRELOAD: json.dumps(settings)}


def _claim(folder: str, slots: int) -> bool:
    for i in range(slots):
        try:
            os.close(os.open(os.path.join(folder, f"slot-{i}"), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            continue
        except OSError:  # the sweep is over and its folder gone
            return False
    return False


def preload() -> None:
    """Ray's worker setup hook: if a slot is free, load the sweep's model into this worker's actor cache, in a
    thread, so that the worker is ready for an actor at once (the first trial waits for the load, never repeats it).
    """
    try:
        settings = json.loads(os.environ.get(PRELOAD, "{}"))
        if settings and _claim(settings["dir"], settings["slots"]):
            threading.Thread(target=_load, args=(settings,), name="atlas-preload", daemon=True).start()
    except Exception:  # a failing hook would make Ray drop the worker: the trial loads the model instead
        return


def _load(settings: dict) -> None:
    try:
        from orchestrator.worker import actor_model

        actor_model(settings["model"], settings["trust_remote_code"], "cpu", settings["dtype"])
    except Exception:  # the trial loads it (and reports what is wrong with it)
        return
    global preloaded
    preloaded = True
