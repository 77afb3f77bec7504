"""Actor side: `run_trial`, the function Ray Tune runs, with the model and baselines cached per actor process.

How this connects: runner.py wraps `run_trial` in `tune.with_parameters` (the splits travel
once through the object store) and `tune.with_resources`; the result goes back to the
driver, which alone writes MLflow.
"""
from __future__ import annotations

import gc
import os
import resource
import socket
import threading
import time

import ray
import torch
from ray import tune

from interventions.cache import LRU
from interventions.context import FamilyRun, TrialContext
from interventions.families import Split
from interventions.hooks import count_hooks
from interventions.kinds import KINDS, TrialResult, run_pack
from interventions.models import Model, load

MODEL_LOADS = 0  # per process: the model-load test reads it back from every trial's result
_MODEL: dict[str, Model] = {}
_LOADING = threading.Lock()  # a preload (orchestrator/startup.py) and the first trial never load twice
_RUNS: LRU[FamilyRun] = LRU(16)  # (family, seed) baselines kept per actor; trials come grouped by seed and family


def actor_model(name: str, trust_remote_code: bool, device: str, dtype: str = "float32") -> Model:
    """The actor's one model, loaded on first use; loading another frees this one (and its baselines) first, so an
    actor never holds two models."""
    global MODEL_LOADS
    key = f"{name}|{trust_remote_code}|{device}|{dtype}"
    with _LOADING:
        if key not in _MODEL:
            if _MODEL:
                _MODEL.clear()
                _RUNS.clear()
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            MODEL_LOADS += 1
            _MODEL[key] = load(name, trust_remote_code, device, dtype)
        return _MODEL[key]


def family_run(model: Model, split: Split) -> FamilyRun:
    return _RUNS.get((model.name, split.family, split.seed), lambda: FamilyRun(model, split))


def of_model(config: dict, splits: dict) -> tuple[dict, dict[tuple[str, int], Split]]:
    """The pack's model's settings and items: a sweep with a `model` axis sends them per model (`models`); a config
    already resolved comes back as it is."""
    if "models" not in config:
        return config, splits
    name = config["pack"][0]["point"]["model"]
    own = {k: v for k, v in config.items() if k != "models"}
    return {**own, "model": name, **config["models"][name]}, splits[name]


def trial_context(config: dict, splits: dict) -> TrialContext:
    config, splits = of_model(config, splits)
    device = "cuda" if config["gpu"] > 0 and torch.cuda.is_available() else "cpu"
    model = actor_model(config["model"], config["trust_remote_code"], device, config.get("dtype", "float32"))
    seed, family = config["pack"][0]["point"]["seed"], config["pack"][0]["point"]["family"]
    others = []
    if KINDS.get(config["kind"]).uses_other_families:
        others = [family_run(model, splits[(f, seed)]) for f in config["families"] if f != family]
    return TrialContext(model, seed, family_run(model, splits[(family, seed)]), others, config["prefix_reuse"],
                        config.get("options", {}))


def _crash_once_for_tests() -> None:
    """Fault injection: with ATLAS_CRASH_ONCE_DIR set, the first trial to claim the marker kills its worker."""
    folder = os.environ.get("ATLAS_CRASH_ONCE_DIR")
    if folder:
        try:
            os.close(os.open(os.path.join(folder, "crashed"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os._exit(1)


def run_estimates(name: str, ctx: TrialContext, pack: list[dict]) -> list[TrialResult]:
    """A screen's estimates of one (family, seed)'s grid points (interventions.attribution.ESTIMATES)."""
    from interventions.attribution import ESTIMATES

    return [TrialResult(m, tags={"estimate": name}) for m in ESTIMATES.get(name).fn(ctx, [p["point"] for p in pack])]


def run_trial(config: dict, splits: dict[tuple[str, int], Split]) -> None:
    """One pack of grid points (one, or several sharing a batched forward).

    config = {pack: [{trial_id, point}], kind, model, families, threads, gpu, trust_remote_code, prefix_reuse,
    dtype, options}, and `estimate` (a screen's estimate name) when the pack's points are to be estimated, not run.
    """
    _crash_once_for_tests()
    config, splits = of_model(config, splits)
    torch.set_num_threads(config["threads"])
    start = time.perf_counter()
    pack = config["pack"]
    ctx = trial_context(config, splits)
    hooks_before = count_hooks(ctx.model.module)  # transformers may keep hooks of its own (output capturing)
    results = run_estimates(config["estimate"], ctx, pack) if config.get("estimate") else \
        run_pack(config["kind"], ctx, [p["point"] for p in pack])
    left = count_hooks(ctx.model.module) - hooks_before
    if left:
        raise RuntimeError(f"{left} forward hooks left on the model after trial {pack[0]['trial_id']}")
    tune.report({
        "results": [{"trial_id": p["trial_id"], "metrics": r.metrics, "extra": r.extra()}
                    for p, r in zip(pack, results)],
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "node": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
        "model_loads": MODEL_LOADS,
        "model": ctx.model.name,
        "pack_size": len(pack),
        "trial_seconds": (time.perf_counter() - start) / len(pack),  # the pack's wall time per grid point
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # the actor's, so far
    })
