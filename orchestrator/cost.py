"""What a sweep will cost, before it starts (`sweep --dry-run`): the forwards the grid implies after packing and
prefix reuse, a wall-time estimate from the model's forwards timed here and the CPU this machine has free now, and
the peak memory of one actor.

The estimate, in seconds (docs/performance.md compares it with measured walls on five specs):

  wall = start-up + trials + END
  start-up = this process's own start (imports, validation: the driver does the same, under the same load)
             + PRE_RAY + RAY_START + max(TUNE_START, the model load) (the actors load the model while Tune starts)
  trials = max(per actor: (baselines + trial forwards + TRIAL_OVERHEAD per Tune trial) / actors,
               the driver: POINT_LOG_S per point logged to MLflow)
  a forward of k of the model's n layers over r rows = k / n x t(r), t(r) linear in r through two timed full
  forwards (the eval batch, and the largest packed batch) with the actors' torch threads
  baselines: per (family, seed) and actor, a clean forward of the eval items and 3 of the train items
  (a screen: a forward and a backward, ~3 forwards, per run instead of every exact trial but the verified ones)

The load: every timing here is CPU time (what the work costs on a free core), and every term is turned into wall
seconds by the share of a core its process gets now (`Shares`): the driver's is what this process got over its own
start (imports and validation, as the driver's); the actors' is probed for PROBE_S with one spinning process per
actor at ACTOR_NICE, as a local Ray starts its workers (as nice as the driver). Linux shares the CPUs between
sessions first (autogroups) and by niceness inside one: Ray's workers stay in the driver's session, so the actors
share one session's slice of the machine with the driver while it is busy. The load average counts every
runnable task, and overstates how much a sweep slows down when many are in a few other sessions. Each fixed cost
is (CPU seconds, waiting seconds): the CPU part is divided by the share of the process doing it, the waiting part
(timeouts, polls, sleeps) is not.

Actors are what Ray would start on this machine: CPUs (or GPUs) / the spec's resources, at most one per trial.
Kinds are read generically: a point with a `layer` of a kind that restarts there (Kind.restarts_at_layer) starts at
L (a component that reads its layer's input: components.FROM_INPUT) or L + 1 (after resid_post[L]) when prefix reuse
is on; a kind that reads the other families (steering's knock-outs) runs their eval items too.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

# Fixed costs as (CPU seconds on a free core, waiting seconds), calibrated from whole sweep processes
# (benchmarks/estimates.py --phases) on the 2-core machine this was written on: see docs/performance.md, "Cost
# before running", for the runs and the loads. Re-measure them when the driver, the workers or the tracking change.
PRE_RAY = (1.0, 0.0)  # validation's end to `ray.init`: the store's checks, the ledger, the grid guard (driver)
RAY_START = (1.0, 8.0)  # ray.init of a local Ray (driver, GCS, raylet; the workers start preloading the model)
TUNE_START = (5.0, 12.0)  # Tuner.fit to the first result besides its forwards and the model load: Tune's start,
# the actors' start, MLflow's set-up on a new store (driver)
TRIAL_OVERHEAD = (0.05, 0.0)  # per Tune trial on an actor besides its forwards: scheduling, the result (actor)
POINT_LOG_S = 0.02  # CPU seconds per grid point: the driver's writer thread logs it as an MLflow run (driver)
END = (1.0, 6.5)  # the last result to exit: Tune's teardown, the table, the aggregate, ray.shutdown (driver)
PROBE_S = 2.0  # how long the shares are probed at dry-run
ACTOR_NICE = 0  # the worker_niceness a local Ray starts its workers (the actors) at (cluster.LOCAL_RAY; Ray's own: 15)
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
    lengths: list[float] = field(default_factory=list)  # per forward: its prompts' tokens over the timed split's
    baseline_length: float = 1.0  # the same, averaged over the (family, seed) splits whose baselines are built

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
    tokens = prompt_tokens(part)
    length = length_scale(part, tokens)
    forwards, lengths = [], []
    for pack in grouped:
        values = pack[0].values
        layers = n - min(_start(sweep, values), n)
        forwards.append((len(pack) * n_eval, layers))
        lengths.append(length(values["family"], values))
        knock = sum(1 for p in pack if p.values.get("strength", 0) < 0) if sweep.kind.uses_other_families else 0
        others = [f for f in part.axes["family"] if f != values["family"]] if knock else []
        forwards += [(knock * n_eval, layers)] * len(others)
        lengths += [length(f, values) for f in others]
    screen, trials, screened = sweep.spec.screen, len(grouped), 0
    if screen is not None:  # the verify set, spread over the packs, plus an estimate trial per (family, seed)
        groups = {(p.values["component"], p.values["method"]) for p in points}
        verified = min(len(points), len(groups) * (screen.verify_top + screen.verify_random))
        share = verified / max(1, len(points))
        forwards = [(n_eval * -(-int(rows * share) // n_eval) or n_eval, layers) for rows, layers in forwards]
        forwards, lengths, screened = forwards[:verified], lengths[:verified], len(points) - verified
        trials = min(trials, verified) + len(part.splits)
    baseline_length = sum(length(family, {"seed": seed}) for family, seed in tokens) / len(tokens) if tokens else 1.0
    return Work(len(points), trials, max(map(len, grouped), default=0), forwards, len(points) * n, len(part.splits),
                screened, lengths, baseline_length)


def _spin(nice: int, seconds: float, out) -> None:
    """A probe process: spin at `nice` for `seconds`; put the share of a core it got."""
    os.nice(nice)
    start, cpu = time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        sum(range(500))
    out.put((time.thread_time() - cpu) / (time.perf_counter() - start))


@dataclass
class Shares:
    """The share of a core each of the sweep's processes would get now: the driver (what this process got over its
    own start) and each actor (probed); and the load average then."""

    driver: float
    actor: float
    load: float

    @staticmethod
    def probe(n_actors: int, seconds: float = PROBE_S, driver: float = 1.0) -> Shares:
        """Spin n_actors processes at ACTOR_NICE above this one for `seconds`, in this process's session (its
        autogroup, where Ray's workers run too: Ray starts no session of its own)."""
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        out = ctx.SimpleQueue()
        procs = [ctx.Process(target=_spin, args=(ACTOR_NICE, seconds, out), daemon=True) for _ in range(n_actors)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(seconds + 30)
        got = [out.get() for _ in procs if not out.empty()] or [1.0]
        return Shares(min(1.0, max(0.01, driver)), min(1.0, max(0.01, statistics.mean(got))), os.getloadavg()[0])


def fixed(cost: tuple[float, float], share: float) -> float:
    """Wall seconds of a fixed cost (CPU seconds, waiting seconds) for a process that gets `share` of a core."""
    return cost[0] / share + cost[1]


@dataclass
class Calibration:
    """Timed here, in CPU seconds (what it costs on a free core): full forwards of the model at two batch sizes, and
    its load."""

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
    wall: tuple[float, float] = (0.0, 0.0)  # the same forwards' wall seconds here

    def forward(self, rows: int, layers: int, n_layers: int) -> float:
        (r1, r2), (t1, t2) = self.rows, self.seconds
        slope = (t2 - t1) / (r2 - r1) if r2 != r1 else t1 / r1
        return max(0.0, t1 + slope * (rows - r1)) * layers / n_layers


def _cpu() -> float:
    """CPU seconds of this process so far (every thread: a model load may use several)."""
    times = os.times()
    return times.user + times.system


def calibrate(sweep, part, pack_rows: int, repeats: int = 3) -> Calibration:
    """Load the model and time full forwards (last position unembedded, as trials do) over the first (family,
    seed)'s eval prompts, and over them stacked to `pack_rows`, with the actors' torch threads: CPU seconds of the
    process (the load) and of this thread (the forwards)."""
    import torch

    from interventions.forward import Batch, encode, position_ids
    from interventions.models import load

    start = _cpu()
    model = load(part.name, sweep.spec.trust_remote_code, dtype=sweep.spec.dtype)
    load_s = _cpu() - start
    split = next(iter(part.splits.values()))
    batch = encode(model.tokenizer, [i.prompt for i in split.eval])
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(part.resources.cpu)))
    try:
        seconds, walls = [], []
        sizes = (len(split.eval), max(len(split.eval), pack_rows))
        for rows in sizes:
            k = -(-rows // len(split.eval))
            big = Batch(batch.ids.repeat(k, 1)[:rows], batch.mask.repeat(k, 1)[:rows])
            runs, wall = [], []
            for _ in range(repeats):
                t, w = _cpu(), time.perf_counter()
                with torch.no_grad():
                    model.module(input_ids=big.ids, attention_mask=big.mask, position_ids=position_ids(big.mask),
                                 use_cache=False, logits_to_keep=1)
                runs.append(_cpu() - t)
                wall.append(time.perf_counter() - w)
            seconds.append(statistics.median(runs[1:] or runs))  # the first warms up
            walls.append(statistics.median(wall[1:] or wall))
    finally:
        torch.set_num_threads(threads)
    config = model.config
    return Calibration(sizes, tuple(seconds), load_s, max(1, int(part.resources.cpu)),
                       sum(p.numel() * p.element_size() for p in model.module.parameters()),
                       int(batch.mask.sum(-1).max()), config.hidden_size,
                       getattr(config, "intermediate_size", 4 * config.hidden_size), config.num_attention_heads,
                       config.vocab_size, tuple(walls))


@dataclass
class Estimate:
    actors: int
    startup_s: float
    compute_s: float  # per actor, wall
    overhead_s: float  # per actor, wall
    logging_s: float  # the driver's, wall
    end_s: float
    wall_s: float
    peak_bytes: int
    parts: dict[str, int]  # peak memory by part


def estimate(sweep, part, w: Work, cal: Calibration, process_s: float, shares: Shares) -> Estimate:
    """The wall of one model's share of a sweep (module docstring): CPU seconds over the shares probed now."""
    n, spec = part.model.n_layers, sweep.spec
    n_actors = max(1, actors(part.resources, max(1, w.trials)))
    baseline = cal.forward(spec.n_eval, n, n) + 3 * cal.forward(spec.n_train, n, n)
    if spec.screen is not None:
        from interventions.ablation import ABLATIONS

        runs = 2 if any(ABLATIONS.get(m).patching for m in sweep.axes.get("method", ())) else 1  # + the corrupt run
        baseline += 3 * runs * cal.forward(spec.n_eval, n, n)
    per_fs_actor = min(n_actors, max(1, w.trials // max(1, w.family_seeds)))
    setup = baseline * w.baseline_length * w.family_seeds * per_fs_actor / n_actors
    scales = w.lengths or [1.0] * len(w.forwards)
    forwards = sum(cal.forward(rows, layers, n) * scale for (rows, layers), scale in zip(w.forwards, scales))
    compute = (forwards / n_actors + setup) / shares.actor
    overhead = fixed(TRIAL_OVERHEAD, shares.actor) * w.trials / n_actors
    logging = POINT_LOG_S * (w.points - w.screened + (w.points if spec.screen is not None else 0)) / shares.driver
    startup = (process_s + fixed(PRE_RAY, shares.driver) + fixed(RAY_START, shares.driver)
               + max(fixed(TUNE_START, shares.driver), cal.load_s / shares.actor))
    end = fixed(END, shares.driver)
    parts = memory(sweep, part, w, cal)
    return Estimate(n_actors, startup, compute, overhead, logging, end,
                    startup + max(compute + overhead, logging) + end, sum(parts.values()), parts)


def prompt_tokens(part) -> dict[tuple[str, int], int]:
    """Tokens of each (family, seed) split's longest eval prompt: a batch is padded to it (a length axis's buckets
    differ many times over, and a forward's time and a baseline's bytes grow with it)."""
    from interventions.families import token_ids

    tok = part.model.tokenizer
    return {key: max(len(token_ids(tok, i.prompt)) for i in split.eval) for key, split in part.splits.items()
            if split.eval}


def length_scale(part, tokens: dict[tuple[str, int], int] | None = None):
    """f(family, point values): the tokens of that (family, seed, length bucket)'s longest prompt over those of the
    split calibrate() times (the first): what a forward over it costs, relative to the timed one."""
    from interventions.length import split_key

    tokens = prompt_tokens(part) if tokens is None else tokens
    timed = tokens.get(next(iter(part.splits), None), 1) or 1

    def scale(family: str, values: dict) -> float:
        return tokens.get((split_key(str(family), values.get("length")), values.get("seed")), timed) / timed

    return scale


def memory(sweep, part, w: Work, cal: Calibration) -> dict[str, int]:
    """Peak bytes of one actor by part: the process, the weights, the cached baselines of the (family, seed)s it
    keeps (clean residuals of every layer, train activations, clean logits; worker._RUNS keeps at most 16, and at most
    execution.baseline_cache_mb besides the one in use, the largest splits assumed), and the largest forward's
    activations (over the longest prompts)."""
    spec, n = sweep.spec, part.model.n_layers
    word = 4  # float32
    seqs = sorted(prompt_tokens(part).values() or [cal.seq], reverse=True)
    seq = seqs[0]
    per_split = [spec.n_eval * s * cal.d_model * n * word * sweep.kind.baseline_copies  # clean residuals
                 + 3 * spec.n_train * cal.d_model * n * word  # train activations, last position
                 + spec.n_eval * (cal.vocab * word + 2 * s * 8) for s in seqs]  # clean logits, token ids and mask
    kept = per_split[:min(16, max(1, w.family_seeds))]
    cache = min(sum(kept), kept[0] + spec.execution.baseline_cache_mb * 2**20)
    rows = max((r for r, _ in w.forwards), default=spec.n_eval)
    per_token = cal.d_model * 6 + cal.d_ff * 3 + cal.n_heads * seq
    transient = rows * seq * per_token * word + rows * cal.vocab * word
    if spec.screen is not None:  # the backward keeps the whole eval forward's graph
        transient = max(transient, spec.n_eval * seq * per_token * n * word * 2)
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
    rows.append(f"timed here: model load {cal.load_s:.1f} CPU s; a full forward ({n} layers) over {cal.rows[0]} rows "
                f"{cal.seconds[0] * 1000:.0f} ms, over {cal.rows[1]} rows {cal.seconds[1] * 1000:.0f} ms of CPU "
                f"({cal.wall[0] * 1000:.0f} and {cal.wall[1] * 1000:.0f} ms wall; {cal.threads} torch "
                f"thread{'s' if cal.threads > 1 else ''}, as an actor)")
    rows.append(f"estimate: wall ~ {est.wall_s:.0f} s = start-up {est.startup_s:.0f} s + trials "
                f"{est.compute_s + est.overhead_s:.1f} s per actor (forwards {est.compute_s:.1f} s, overhead "
                f"{est.overhead_s:.1f} s; the driver logs for {est.logging_s:.1f} s meanwhile) + end {est.end_s:.0f} s")
    rows.append(f"peak memory per actor ~ {est.peak_bytes / mb:.0f} MB ("
                + ", ".join(f"{k} {v / mb:.0f} MB" for k, v in est.parts.items()) + ")")
    if sweep.options.get("generate"):
        rows.append("not counted: generation (`generate`), measured at ~3.4x the steered forward per pack on a "
                    "2-core CPU (docs/steering.md)")
    return rows


def dry_run_cost(sweep, points) -> list[str]:
    """The lines `sweep --dry-run` prints after the grid size: each model's (under its name when several)."""
    return dry_run_estimate(sweep, points)[0]


_PROCESS: tuple[float, float] | None = None  # (wall, CPU seconds) of this process's start


def dry_run_estimate(sweep, points) -> tuple[list[str], float]:
    """`dry_run_cost`'s lines and the estimated wall seconds of the sweep (`study --dry-run`): one start-up and end;
    the models' trials one after the other, each model after the first loaded once more by the actors."""
    import psutil

    global _PROCESS
    if _PROCESS is None:  # imports and validation, as the driver's: once (a study's later sweeps share the process)
        _PROCESS = (time.time() - psutil.Process().create_time(), _cpu())
    process_s, process_cpu = _PROCESS
    got = []
    for part in sweep.parts:
        own = [p for p in points if p.model == part.name]
        w = work(sweep, part, own)
        got.append((part, w, calibrate(sweep, part, max((r for r, _ in w.forwards), default=sweep.spec.n_eval))))
    n_actors = max(max(1, actors(part.resources, max(1, w.trials))) for part, w, _ in got)
    shares = Shares.probe(n_actors, driver=min(1.0, max(0.01, process_cpu / max(process_s, 1e-6))))
    lines, wall = [], 0.0
    for i, (part, w, cal) in enumerate(got):
        est = estimate(sweep, part, w, cal, process_s, shares)
        if i == 0:
            wall += est.wall_s
        else:  # one start-up and end for the sweep; the actors load this model when its first pack comes
            wall += est.wall_s - est.startup_s - est.end_s + cal.load_s / shares.actor
        rows = render(sweep, part, w, cal, est)
        lines += [f"{part.name}:", *("  " + row for row in rows)] if len(sweep.parts) > 1 else rows
    lines.append(f"load now: {shares.load:.1f} (1-min average on {os.cpu_count()} CPUs); the driver gets "
                 f"{shares.driver:.0%} of a core (as this process did), each of {n_actors} actor(s) "
                 f"{shares.actor:.0%} (probed for {PROBE_S:g} s at nice +{ACTOR_NICE})")
    if len(sweep.parts) > 1:
        lines.append(f"estimate for the sweep: wall ~ {wall:.0f} s")
    return lines, wall
