"""Actor side: `run_trial`, the function Ray Tune runs, with the model and baselines cached per actor process.

How this connects: driver.py wraps `run_trial` in `tune.with_parameters` (the settings and splits
travel once through the object store) and `tune.with_resources`; Tune's config carries only the
pack; the result goes back to the driver, which alone writes MLflow.
"""
from __future__ import annotations

import gc
import os
import resource
import socket
import threading
import time
from dataclasses import dataclass

import ray
import torch
from ray import tune

import adapters  # noqa: F401  (the kinds above interventions: adapters adds its own to KINDS, run here by name)
from interventions.cache import LRU
from interventions.context import FamilyRun, TrialContext
from interventions.families import Split, token_ids
from interventions.flops import counting, matmul_rate, rate_rows
from interventions.hooks import count_hooks
from interventions.kinds import KINDS, TrialResult, run_pack
from interventions.length import split_key
from interventions.models import Model, load
from orchestrator import startup

MODEL_LOADS = 0  # per process: the model-load test reads it back from every trial's result
_MODEL: dict[str, Model] = {}
_LOADING = threading.Lock()  # a preload (orchestrator/startup.py) and the first trial never load twice
# (family, seed) baselines kept per actor, at most 16 and at most execution.baseline_cache_mb besides the one in use
# (a long length bucket's baselines weigh a GiB or more); trials come grouped by seed and family
_RUNS: LRU[FamilyRun] = LRU(16, weigh=FamilyRun.nbytes)  # max_bytes: each trial's WorkerSettings.cache_bytes


def actor_model(name: str, trust_remote_code: bool, device: str, dtype: str = "float32") -> Model:
    """The actor's one model in one precision (`dtype`: interventions/precision.py), loaded on first use; loading
    another (or another precision) frees this one (and its baselines) first, so an actor never holds two models."""
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


@dataclass(frozen=True)
class ModelSettings:
    """What an actor needs to know of one model of the sweep besides its items."""

    families: tuple[str, ...]  # the model's families (a kind that reads the others gets their baselines)
    threads: int  # torch threads (the actor's CPUs)
    gpu: float  # > 0: on the GPU when the actor has one


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a trial reads besides its pack and items: the same for every trial of one Tune run."""

    kind: str
    trust_remote_code: bool
    prefix_reuse: bool
    dtype: str
    options: dict  # the kind's option sections (None: off)
    models: dict[str, ModelSettings]  # model name -> its settings
    cache_bytes: int  # execution.baseline_cache_mb: the (family, seed) baselines an actor keeps besides the one in use
    estimate: str | None = None  # a screen's estimate name: the pack's points are estimated, not run
    estimate_params: tuple[tuple[str, object], ...] = ()  # its `screen:` keys (Estimate.params), as keywords


def trial_context(settings: WorkerSettings, pack: list[dict], splits: dict) -> TrialContext:
    """The context of a pack's trial: the actor's model (loaded once) and the (family, seed) baselines it reads."""
    name = pack[0]["model"]
    own, splits = settings.models[name], splits[name]
    device = "cuda" if own.gpu > 0 and torch.cuda.is_available() else "cpu"
    precision = pack[0]["point"].get("precision", settings.dtype)  # a precision axis: the pack's own
    model = actor_model(name, settings.trust_remote_code, device, precision)
    _RUNS.max_bytes = settings.cache_bytes
    seed, family = pack[0]["point"]["seed"], pack[0]["point"]["family"]
    length = pack[0]["point"].get("length")  # a length axis: the items of the point's bucket
    others = []
    if KINDS.get(settings.kind).uses_other_families:
        others = [family_run(model, splits[(split_key(f, length), seed)]) for f in own.families if f != family]
    return TrialContext(model, seed, family_run(model, splits[(split_key(family, length), seed)]), others,
                        settings.prefix_reuse, settings.options)


def run_estimates(name: str, ctx: TrialContext, pack: list[dict], params: dict | None = None) -> list[TrialResult]:
    """A screen's estimates of one (family, seed)'s grid points (interventions.attribution.ESTIMATES)."""
    from interventions.attribution import ESTIMATES

    got = ESTIMATES.get(name).fn(ctx, [p["point"] for p in pack], **(params or {}))
    return [TrialResult(m, tags={"estimate": name}) for m in got]


def run_trial(config: dict, splits: dict[str, dict[tuple[str, int], Split]], settings: WorkerSettings) -> None:
    """One pack of grid points (one, or several sharing a batched forward): config = {pack: [{trial_id, point,
    model}]}; `splits` holds every model's items by model name."""
    pack = config["pack"]
    threads = settings.models[pack[0]["model"]].threads
    torch.set_num_threads(threads)
    start = time.perf_counter()
    ctx = trial_context(settings, pack, splits)
    hooks_before = count_hooks(ctx.model.module)  # transformers may keep hooks of its own (output capturing)
    computing, cpu = time.perf_counter(), time.process_time()
    with counting(ctx.model) as flops:
        if settings.estimate:
            results = run_estimates(settings.estimate, ctx, pack, dict(settings.estimate_params))
        else:
            results = run_pack(settings.kind, ctx, [p["point"] for p in pack])
    if "length" in pack[0]["point"]:  # the realised prompt lengths of the bucket's eval items, per run
        sizes = [len(token_ids(ctx.model.tokenizer, i.prompt)) for i in ctx.family.split.eval]
        for r in results:
            r.metrics["prompt_tokens"] = sum(sizes) / len(sizes)
            r.items.setdefault("prompt_tokens", [float(n) for n in sizes])
    compute_seconds, cpu_seconds = time.perf_counter() - computing, time.process_time() - cpu
    left = count_hooks(ctx.model.module) - hooks_before
    if left:
        raise RuntimeError(f"{left} forward hooks left on the model after trial {pack[0]['trial_id']}")
    widths = ctx.model.arch.widths(ctx.model.module.config)
    tune.report({
        "results": [{"trial_id": p["trial_id"], "metrics": r.metrics, "extra": r.extra()}
                    for p, r in zip(pack, results)],
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "node": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
        "model_loads": MODEL_LOADS,
        "preloaded": startup.preloaded,  # this worker's setup hook loaded the model before a trial asked for it
        "model": ctx.model.name,
        "pack_size": len(pack),
        "trial_seconds": (time.perf_counter() - start) / len(pack),  # the pack's wall time per grid point
        "flops": flops.total,  # the pack's model FLOPs (forwards and backwards, baselines it computed included)
        "compute_seconds": compute_seconds,  # the pack's trial functions, without the model load
        # the same in the actor's CPU time, which other processes' load does not add to (no figure for a GPU)
        "cpu_seconds": cpu_seconds if ctx.model.device.type == "cpu" else None,
        "threads": threads,
        "matmul_flops_per_s": matmul_rate(rate_rows(flops.rows), widths.d_model, widths.d_ff, threads,
                                          str(ctx.model.device)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # the actor's, so far
    })
