"""Benchmark: a steering sweep through the orchestrator (Ray Tune + MLflow) vs a plain PyTorch loop, in one run.

The plain loop is what a researcher writes by hand: load the model once; per (family, seed)
the clean run and the vectors once; per grid point one forward of the whole model over the
eval prompts with a forward hook adding the vector at layer L (and the other families' prompts
for a knock-out); prompts batched, only the last position unembedded (`logits_to_keep=1`).
It logs nothing. The sweeps go through `run_sweep` (what the CLI calls: Ray start, actors
loading the model, MLflow store) in three settings:

  naive      execution {pack: 1, prefix_reuse: false}: the same forward passes as the loop
  reuse      execution {pack: 1}: each trial runs only the layers above L, from the cached residual
  packed     the spec's execution (default pack 32): a layer's strengths x vector types in one forward

and, without Ray or MLflow, the orchestrator's own packed trial functions called in a loop
(`in-process`), which separates the scheduling and logging cost from the forward passes.

    python benchmarks/sweep_vs_loop.py sweeps/steering_migration.yaml --seeds 1 --families 2 --layers 2,14,26
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from interventions.architectures import part
from interventions.context import FamilyRun, TrialContext, seeded_generator
from interventions.forward import position_ids
from interventions.kinds import run_pack
from interventions.models import load
from interventions.steering import VECTORS
from orchestrator.grid import expand, packs
from orchestrator.runner import run_sweep
from orchestrator.spec import load_sweep


def plain_loop(sweep, points) -> None:
    """One hooked full forward per grid point (plus one per other family for a knock-out)."""
    model = load(sweep.parts[0].name)
    runs = {key: FamilyRun(model, split) for key, split in sweep.parts[0].splits.items()}
    layers = part(model.module, model.arch.layers)
    vectors = {}
    for point in points:
        v = point.values
        run = runs[(v["family"], v["seed"])]
        key = (v["family"], v["seed"], v["layer"], v["vector_type"])
        if key not in vectors:
            vectors[key] = VECTORS.get(v["vector_type"])(run.train_acts(v["layer"]),
                                                         seeded_generator(v["seed"], v["layer"]))
            run.clean_logits  # noqa: B018  (the clean baseline, once per family and seed)
        add = v["strength"] * run.resid_norm(v["layer"]) * vectors[key]
        targets = [run] + ([runs[(f, v["seed"])] for f in sweep.axes["family"] if f != v["family"]]
                           if v["strength"] < 0 else [])
        for r in targets:
            mask = r.eval_batch.mask[..., None].float()  # the vector goes on prompt positions, as ours
            handle = layers[v["layer"]].register_forward_hook(
                lambda m, i, out, mask=mask, add=add: (out[0] + add * mask, *out[1:]) if isinstance(out, tuple)
                else out + add * mask)
            try:
                with torch.no_grad():
                    b = r.eval_batch
                    model.module(input_ids=b.ids, attention_mask=b.mask, position_ids=position_ids(b.mask),
                                 use_cache=False, logits_to_keep=1)
            finally:
                handle.remove()


def in_process(sweep, points) -> None:
    """The orchestrator's trial functions, pack by pack, in this process: no Ray, no MLflow."""
    model = load(sweep.parts[0].name)
    runs = {key: FamilyRun(model, split) for key, split in sweep.parts[0].splits.items()}
    for pack in packs(sweep, points):
        v = pack[0].values
        others = [runs[(f, v["seed"])] for f in sweep.axes["family"] if f != v["family"]]
        ctx = TrialContext(model, v["seed"], runs[(v["family"], v["seed"])], others, sweep.spec.execution.prefix_reuse)
        run_pack(sweep.kind.name, ctx, [p.values for p in pack])


def through_sweep(sweep, points) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_sweep(sweep, tracking_uri=f"sqlite:///{tmp}/bench.db", top=3, out_dir=Path(tmp))
    assert outcome.logged == len(points) and not outcome.failed, outcome


def with_execution(sweep, **settings):
    return sweep.updated(execution=sweep.spec.execution.model_copy(update=settings))


def cut(sweep, seeds: int, families: int, layers: list[int] | None):
    axes = dict(sweep.axes)
    if seeds:
        axes["seed"] = axes["seed"][:seeds]
    if families:
        axes["family"] = axes["family"][:families]
    if layers:
        axes["layer"] = layers
    part = sweep.parts[0]
    splits = {k: s for k, s in part.splits.items() if k[1] in axes["seed"] and k[0] in axes["family"]}
    return replace(sweep, axes=axes, parts=(replace(part, axes=axes, splits=splits),))


def timed(fn, repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    print(f"BENCH walls: {', '.join(f'{w:.1f}' for w in walls)} s", flush=True)
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--seeds", type=int, default=1, help="keep the first N seeds (0: all)")
    parser.add_argument("--families", type=int, default=2, help="keep the first N families (0: all)")
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 2,14,26")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setting; medians are printed")
    parser.add_argument("--profile", action="store_true", help="also profile the packed trials in process")
    args = parser.parse_args()
    sweep = cut(load_sweep(args.spec), args.seeds, args.families, args.layers)
    points = expand(sweep)
    threads = torch.get_num_threads()
    naive, reuse = with_execution(sweep, pack=1, prefix_reuse=False), with_execution(sweep, pack=1)
    walls = {
        "plain PyTorch loop (hooked full forward per trial)": timed(lambda: plain_loop(sweep, points), args.repeats),
        "sweep naive  (pack 1, no prefix reuse)": timed(lambda: through_sweep(naive, points), args.repeats),
        "sweep reuse  (pack 1, prefix reuse)": timed(lambda: through_sweep(reuse, points), args.repeats),
        f"sweep packed (pack {sweep.pack_size}, prefix reuse)": timed(lambda: through_sweep(sweep, points),
                                                                     args.repeats),
        "in-process packed trial functions (no Ray, no MLflow)": timed(lambda: in_process(sweep, points),
                                                                        args.repeats),
    }
    loop = walls["plain PyTorch loop (hooked full forward per trial)"]
    print(f"\n{len(points)} trials of {sweep.spec.name} on {sweep.parts[0].name} (n_eval {sweep.spec.n_eval}), "
          f"{len(packs(sweep, points))} packs; {os.cpu_count()} CPUs, {threads} torch threads in the loop, "
          f"{sweep.spec.resources.cpu:g} per actor; load average {os.getloadavg()[0]:.2f}; "
          f"median of {args.repeats}")
    for name, wall in walls.items():
        print(f"  {name:<52} {wall:8.1f} s   {wall / loop:5.2f} x loop")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(in_process, sweep, points)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
