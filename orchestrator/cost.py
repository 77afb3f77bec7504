"""What a sweep will cost, before it starts (`sweep --dry-run`): the forwards the grid implies after packing and
prefix reuse, a wall-time estimate calibrated by timing the model here, and the peak memory of one actor.

The estimate, in seconds (docs/performance.md compares it with measured walls):

  wall = start-up + per actor: (baselines + trial forwards + TRIAL_OVERHEAD_S per Tune trial) / actors + END_S
  start-up = this process's own start (imports, validation, splits: the driver does the same) + RAY_START_S
             + max(TUNE_START_S, model load timed here) (the actors load the model while Tune starts)
  a forward of k of the model's n layers over r rows = k / n x t(r), t(r) linear in r through two timed full
  forwards (the eval batch, and the largest packed batch) with the actors' torch threads
  baselines: per (family, seed) and actor, a clean forward of the eval items and 3 of the train items
  (a screen: a forward and a backward, ~3 forwards, per run instead of every exact trial but the verified ones)

Actors are what Ray would start on this machine: CPUs (or GPUs) / the spec's resources, at most one per trial.
Kinds are read generically: a point with a `layer` of a kind that restarts there (Kind.restarts_at_layer) starts at
L (a component that reads its layer's input: components.FROM_INPUT) or L + 1 (after resid_post[L]) when prefix reuse
is on; a kind that reads the other families (steering's knock-outs) runs their eval items too. The constants were
measured on the 2-core machine this was written on.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

RAY_START_S = 4.0  # ray.init of a local Ray (no dashboard)
TUNE_START_S = 4.0  # Tuner.fit until the first trial runs on an actor
END_S = 3.0  # Tune's teardown, the summary, ray.shutdown
TRIAL_OVERHEAD_S = 0.05  # per Tune trial on an actor: scheduling, result reporting
PROCESS_BYTES = 650 * 2**20  # an actor process before its model: Python, Ray worker, torch, transformers


WEIGHTS_FACTOR = 1.2  # an actor's weights in memory over their bytes (loading keeps some copies a while)
WORKING_FACTOR, WORKING_BYTES = 1.5, 3 * 2**29  # cached baselines, activations: 1.5 x the weights, at most 1.5 GiB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 4, "nf4": 4}  # int8 / nf4: loaded in float32
# and then quantised (interventions/precision.py), so the load's peak holds float32 weights


def actor_bytes(sweep, part) -> int:
    """Ray `memory` one actor of a sweep's model (its part) asks for: resources.memory_gb if given, else the process,
    the weights and the working set. Measured peak RSS of the scale sweeps' actors (n_eval 8, float32): SmolLM2-135M
    1.9 GiB, Gemma 3 270M 3.2, Qwen2.5-Coder 0.5B 3.7, 1.5B 8.5; this formula asks 2.0, 3.3, 4.9 and 10.0 GiB."""
    given = part.resources.memory_gb
    if given is not None:
        return int(given * 2**30)
    weights = part.model.n_params * max(DTYPE_BYTES[p] for p in sweep.precisions)  # an actor may hold any of them
    return int(PROCESS_BYTES + weights * WEIGHTS_FACTOR + min(WORKING_BYTES, weights * WORKING_FACTOR))


def actors(resources, n_trials: int, cpus: int | None = None, gpus: float = 0.0) -> int:
    """How many trial actors a local Ray starts: CPUs (and GPUs) over what one trial asks for, at most one per
    trial."""
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    n = int(cpus // resources.cpu)
    if resources.gpu > 0:
        n = min(n, int(gpus // resources.gpu))
    return max(0, min(n, n_trials))


@dataclass
class Work:
    """The forwards a grid implies: (rows, layers) of each batched forward, and the baselines."""

    points: int
    trials: int  # Tune trials (packs; a screen's estimate trials too)
    largest_pack: int
    forwards: list[tuple[int, int]]  # (rows, decoder layers run) per batched forward
    naive_layer_forwards: int  # one full forward per point, no packing or prefix reuse
    family_seeds: int
    screened: int = 0  # grid points estimated instead of run (a screen)

    @property
    def layer_forwards(self) -> int:
        return sum(layers for _, layers in self.forwards)


def _start(sweep, values: dict) -> int:
    """The first decoder layer a trial's forward runs (Kind.restarts_at_layer; the others: full forwards)."""
    from interventions.components import FROM_INPUT

    if not sweep.spec.execution.prefix_reuse or not sweep.kind.restarts_at_layer:
        return 0
    layer = values.get("layer")
    if layer is None:  # steering's prompting baseline: one full forward of the k-shot prompts
        return 0
    first = min(layer) if isinstance(layer, (list, tuple)) else layer  # a layer set starts at its lowest layer
    return first + (0 if values.get("component") in FROM_INPUT else 1)


def work(sweep, part, points) -> Work:
    """Count the batched forwards of every pack of one model's points (a screen: of its verify set's share)."""
    from orchestrator.grid import packs

    n, n_eval = part.model.n_layers, sweep.spec.n_eval
    grouped = packs(sweep, points)
    forwards = []
    for pack in grouped:
        layers = n - min(_start(sweep, pack[0].values), n)
        forwards.append((len(pack) * n_eval, layers))
        knock = sum(1 for p in pack if p.values.get("strength", 0) < 0) if sweep.kind.uses_other_families else 0
        forwards += [(knock * n_eval, layers)] * ((len(part.axes["family"]) - 1) if knock else 0)
    screen, trials, screened = sweep.spec.screen, len(grouped), 0
    if screen is not None:  # the verify set, spread over the packs, plus an estimate trial per (family, seed)
        groups = {(p.values["component"], p.values["method"]) for p in points}
        verified = min(len(points), len(groups) * (screen.verify_top + screen.verify_random))
        share = verified / max(1, len(points))
        forwards = [(n_eval * -(-int(rows * share) // n_eval) or n_eval, layers) for rows, layers in forwards]
        forwards, screened = forwards[:verified], len(points) - verified
        trials = min(trials, verified) + len(part.splits)
    return Work(len(points), trials, max(map(len, grouped), default=0), forwards, len(points) * n, len(part.splits),
                screened)


@dataclass
class Calibration:
    """Timed here: full forwards of the model at two batch sizes, and its load."""

    rows: tuple[int, int]
    seconds: tuple[float, float]
    load_s: float
    threads: int
    param_bytes: int
    seq: int  # longest eval prompt, tokens
    d_model: int
    d_ff: int
    n_heads: int
    vocab: int

    def forward(self, rows: int, layers: int, n_layers: int) -> float:
        (r1, r2), (t1, t2) = self.rows, self.seconds
        slope = (t2 - t1) / (r2 - r1) if r2 != r1 else t1 / r1
        return max(0.0, t1 + slope * (rows - r1)) * layers / n_layers


def calibrate(sweep, part, pack_rows: int, repeats: int = 3) -> Calibration:
    """Load the model and time full forwards (last position unembedded, as trials do) over the first (family,
    seed)'s eval prompts, and over them stacked to `pack_rows`, with the actors' torch threads."""
    import torch

    from interventions.forward import Batch, encode, position_ids
    from interventions.models import load

    start = time.perf_counter()
    model = load(part.name, sweep.spec.trust_remote_code, dtype=sweep.spec.dtype)
    load_s = time.perf_counter() - start
    split = next(iter(part.splits.values()))
    batch = encode(model.tokenizer, [i.prompt for i in split.eval])
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(part.resources.cpu)))
    try:
        seconds = []
        sizes = (len(split.eval), max(len(split.eval), pack_rows))
        for rows in sizes:
            k = -(-rows // len(split.eval))
            big = Batch(batch.ids.repeat(k, 1)[:rows], batch.mask.repeat(k, 1)[:rows])
            runs = []
            for _ in range(repeats):
                t = time.perf_counter()
                with torch.no_grad():
                    model.module(input_ids=big.ids, attention_mask=big.mask, position_ids=position_ids(big.mask),
                                 use_cache=False, logits_to_keep=1)
                runs.append(time.perf_counter() - t)
            seconds.append(statistics.median(runs[1:] or runs))  # the first warms up
    finally:
        torch.set_num_threads(threads)
    config = model.config
    return Calibration(sizes, tuple(seconds), load_s, max(1, int(part.resources.cpu)),
                       sum(p.numel() * p.element_size() for p in model.module.parameters()),
                       int(batch.mask.sum(-1).max()), config.hidden_size,
                       getattr(config, "intermediate_size", 4 * config.hidden_size), config.num_attention_heads,
                       config.vocab_size)


@dataclass
class Estimate:
    actors: int
    startup_s: float
    compute_s: float  # per actor
    overhead_s: float  # per actor
    wall_s: float
    peak_bytes: int
    parts: dict[str, int]  # peak memory by part


def estimate(sweep, part, w: Work, cal: Calibration, process_s: float) -> Estimate:
    n, spec = part.model.n_layers, sweep.spec
    n_actors = max(1, actors(part.resources, max(1, w.trials)))
    baseline = cal.forward(spec.n_eval, n, n) + 3 * cal.forward(spec.n_train, n, n)
    if spec.screen is not None:
        from interventions.ablation import ABLATIONS

        runs = 2 if any(ABLATIONS.get(m).patching for m in sweep.axes.get("method", ())) else 1  # + the corrupt run
        baseline += 3 * runs * cal.forward(spec.n_eval, n, n)
    per_fs_actor = min(n_actors, max(1, w.trials // max(1, w.family_seeds)))
    setup = baseline * w.family_seeds * per_fs_actor / n_actors
    compute = sum(cal.forward(rows, layers, n) for rows, layers in w.forwards) / n_actors + setup
    overhead = TRIAL_OVERHEAD_S * w.trials / n_actors
    startup = process_s + RAY_START_S + max(TUNE_START_S, cal.load_s)
    parts = memory(sweep, part, w, cal)
    return Estimate(n_actors, startup, compute, overhead, startup + compute + overhead + END_S, sum(parts.values()),
                    parts)


def memory(sweep, part, w: Work, cal: Calibration) -> dict[str, int]:
    """Peak bytes of one actor by part: the process, the weights, the cached baselines of the (family, seed)s it
    keeps (clean residuals of every layer, train activations), and the largest forward's activations."""
    spec, n = sweep.spec, part.model.n_layers
    word = 4  # float32
    kept = min(16, w.family_seeds)  # worker._RUNS keeps 16 (family, seed) baselines
    resid = spec.n_eval * cal.seq * cal.d_model * n * word  # clean resid_post of every layer
    cache = kept * (resid * sweep.kind.baseline_copies + 3 * spec.n_train * cal.d_model * n * word)
    rows = max((r for r, _ in w.forwards), default=spec.n_eval)
    per_token = cal.d_model * 6 + cal.d_ff * 3 + cal.n_heads * cal.seq
    transient = rows * cal.seq * per_token * word + rows * cal.vocab * word
    if spec.screen is not None:  # the backward keeps the whole eval forward's graph
        transient = max(transient, spec.n_eval * cal.seq * per_token * n * word * 2)
    return {"process": PROCESS_BYTES, "weights": cal.param_bytes, "cached baselines": cache,
            "largest forward": transient}


def render(sweep, part, w: Work, cal: Calibration, est: Estimate) -> list[str]:
    spec, n = sweep.spec, part.model.n_layers
    mb = 2**20
    rows = [f"work: {w.trials} Tune trials (packs of up to {w.largest_pack} points) on {est.actors} actors "
            f"({os.cpu_count()} CPUs here, resources.cpu {part.resources.cpu:g}); {len(w.forwards)} batched forwards, "
            f"{w.layer_forwards} layer-forwards after packing and prefix reuse (one full forward per point: "
            f"{w.naive_layer_forwards})" + (f"; a screen estimates {w.screened} points instead of running them"
                                             if spec.screen is not None else "")]
    rows.append(f"timed here: model load {cal.load_s:.1f} s; a full forward ({n} layers) over {cal.rows[0]} rows "
                f"{cal.seconds[0] * 1000:.0f} ms, over {cal.rows[1]} rows {cal.seconds[1] * 1000:.0f} ms "
                f"({cal.threads} torch thread{'s' if cal.threads > 1 else ''}, as an actor)")
    rows.append(f"estimate: wall ~ {est.wall_s:.0f} s = start-up {est.startup_s:.0f} s + trials {est.compute_s:.1f} s"
                f" + overhead {est.overhead_s:.1f} s per actor + end {END_S:.0f} s (load average "
                f"{os.getloadavg()[0]:.1f} now)")
    rows.append(f"peak memory per actor ~ {est.peak_bytes / mb:.0f} MB ("
                + ", ".join(f"{k} {v / mb:.0f} MB" for k, v in est.parts.items()) + ")")
    if sweep.options.get("generate"):
        rows.append("not counted: generation (`generate`), measured at ~3.4x the steered forward per pack on a "
                    "2-core CPU (docs/steering.md)")
    return rows


def dry_run_cost(sweep, points) -> list[str]:
    """The lines `sweep --dry-run` prints after the grid size: each model's (under its name when several)."""
    return dry_run_estimate(sweep, points)[0]


def dry_run_estimate(sweep, points) -> tuple[list[str], float]:
    """`dry_run_cost`'s lines and the estimated wall seconds summed over the sweep's models (`study --dry-run`)."""
    import psutil

    process_s = time.time() - psutil.Process().create_time()  # imports and validation, as the driver's
    lines, wall = [], 0.0
    for part in sweep.parts:
        own = [p for p in points if p.model == part.name]
        w = work(sweep, part, own)
        cal = calibrate(sweep, part, max((r for r, _ in w.forwards), default=sweep.spec.n_eval))
        est = estimate(sweep, part, w, cal, process_s)
        wall += est.wall_s
        rows = render(sweep, part, w, cal, est)
        lines += [f"{part.name}:", *("  " + row for row in rows)] if len(sweep.parts) > 1 else rows
    return lines, wall
