"""Benchmark: a steering sweep through the orchestrator vs a plain in-process PyTorch loop, in one run.

The plain loop does the same forward passes the simple way: per trial, one forward of the
whole model over the family's eval prompts with a forward hook adding the vector at
layer L (plus the other families' prompts for negative strengths), after computing the
clean runs and the vectors once per (family, seed); it already batches prompts and
unembeds only the last position (`logits_to_keep=1`). It logs nothing. The orchestrator
adds Ray Tune scheduling, the MLflow record and aggregation; it saves the layers below
L (cached clean residual) and unembeds only the last position.

    python benchmarks/steering_vs_loop.py sweeps/steering_migration.yaml --seeds 1
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from interventions.context import FamilyRun, TrialContext, seeded_generator
from interventions.kinds import run_kind
from interventions.forward import position_ids
from interventions.models import load
from interventions.steering import VECTORS
from orchestrator.grid import expand
from orchestrator.runner import run_sweep
from orchestrator.spec import load_sweep


def plain_loop(sweep, points, threads: int) -> float:
    """Seconds for the same forward passes as the sweep, one full hooked forward per trial."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = load(sweep.spec.model)
    runs = {key: FamilyRun(model, split) for key, split in sweep.splits.items()}
    layers = model.module.model.layers
    vectors = {}
    for point in points:
        v = point.values
        run = runs[(v["family"], v["seed"])]
        key = (v["family"], v["seed"], v["layer"], v["vector_type"])
        if key not in vectors:
            vectors[key] = VECTORS.get(v["vector_type"])(run.train_acts(v["layer"]), seeded_generator(v["seed"], v["layer"]))
            run.clean_logits  # noqa: B018  (clean baseline once per family and seed)
        add = v["strength"] * run.resid_norm(v["layer"]) * vectors[key]
        targets = [run] + ([runs[(f, v["seed"])] for f in sweep.axes["family"] if f != v["family"]]
                           if v["strength"] < 0 else [])
        handle = layers[v["layer"]].register_forward_hook(
            lambda m, i, out: (out[0] + add, *out[1:]) if isinstance(out, tuple) else out + add)
        try:
            with torch.no_grad():
                for r in targets:
                    b = r.eval_batch
                    model.module(input_ids=b.ids, attention_mask=b.mask, position_ids=position_ids(b.mask),
                                 use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
    return time.perf_counter() - start


def same_trials_in_process(sweep, points, threads: int) -> float:
    """Seconds for the orchestrator's own trial functions called one after another in this process."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = load(sweep.spec.model)
    runs = {key: FamilyRun(model, split) for key, split in sweep.splits.items()}
    for point in points:
        v = point.values
        others = [runs[(f, v["seed"])] for f in sweep.axes["family"] if f != v["family"]]
        run_kind(sweep.kind.name, TrialContext(model, v["seed"], runs[(v["family"], v["seed"])], others), v)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--seeds", type=int, default=0, help="keep only the first N seeds (0: all)")
    args = parser.parse_args()
    sweep = load_sweep(args.spec)
    if args.seeds:
        seeds = sweep.axes["seed"][: args.seeds]
        sweep = replace(sweep, axes={**sweep.axes, "seed": seeds},
                        splits={k: s for k, s in sweep.splits.items() if k[1] in seeds})
    points = expand(sweep)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_sweep(sweep, tracking_uri=f"sqlite:///{tmp}/bench.db", top=3, out_dir=Path(tmp))
        orchestrated = time.perf_counter() - start
    threads = torch.get_num_threads()
    loop = plain_loop(sweep, points, threads)
    direct = same_trials_in_process(sweep, points, threads)
    print(f"\n{len(points)} trials of {sweep.spec.name} on {sweep.spec.model}, {threads} CPU threads")
    print(f"orchestrator (Ray Tune + MLflow, cold start included)   : {orchestrated:8.1f} s")
    print(f"plain PyTorch loop, one hooked full forward per trial    : {loop:8.1f} s")
    print(f"the orchestrator's trial functions in one process, no Ray: {direct:8.1f} s")
    print(f"ratio orchestrator / plain loop                          : {orchestrated / loop:8.2f}")
    print(f"ratio orchestrator / same trials in process              : {orchestrated / direct:8.2f}")


if __name__ == "__main__":
    main()
