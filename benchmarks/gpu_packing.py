"""Benchmark: fractional-GPU packing, four model-holding actors per GPU (`gpu: 0.25`) vs one (`gpu: 1`).

Runs one spec twice through `run_sweep` on the same Ray, changing only `resources.gpu`, and
prints grid points per second of each and their ratio. Needs a machine with a CUDA GPU;
`--fake-gpus N` starts Ray with N pretend GPUs (the actors then compute on the CPU), which
checks the scheduling only, not the speed.

    python benchmarks/gpu_packing.py sweeps/smoke.yaml
    python benchmarks/gpu_packing.py sweeps/smoke.yaml --fake-gpus 4     # scheduling only, on a CPU
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import ray
import torch
from mlflow.tracking import MlflowClient

from orchestrator.runner import run_sweep
from orchestrator.spec import load_sweep


def one(sweep, gpu: float) -> tuple[float, int, int]:
    """(wall seconds, points, distinct actors) of the sweep with `gpu` per actor, in a fresh store."""
    sweep = sweep.updated(resources=sweep.spec.resources.model_copy(update={"gpu": gpu}))
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/bench.db"
        start = time.perf_counter()
        outcome = run_sweep(sweep, tracking_uri=uri, top=0, out_dir=Path(tmp))
        wall = time.perf_counter() - start
        client = MlflowClient(uri)
        runs = client.search_runs([outcome.experiment_id], "tags.`orchestrator.role` = 'trial'", max_results=50_000)
        actors = Counter(r.data.tags["orchestrator.worker"] for r in runs)
    assert outcome.logged == outcome.n_points and not outcome.failed, outcome
    return wall, outcome.n_points, len(actors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--fake-gpus", type=int, default=0, help="pretend GPUs (scheduling check on a CPU machine)")
    args = parser.parse_args()
    sweep = load_sweep(args.spec)
    if not args.fake_gpus and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: use --fake-gpus N to check the scheduling only")
    ray.init(num_gpus=args.fake_gpus or None, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        results = {gpu: one(sweep, gpu) for gpu in (1.0, 0.25)}
    finally:
        ray.shutdown()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{args.fake_gpus} fake GPUs (CPU)"
    print(f"\n{sweep.spec.name} on {sweep.parts[0].name} (n_eval {sweep.spec.n_eval}), {device}, {gpus:g} GPUs in Ray")
    for gpu, (wall, n, actors) in results.items():
        print(f"  gpu: {gpu:<5g} {actors} actors  {wall:7.1f} s  {n / wall:7.1f} points/s")
    print(f"  four packed actors per GPU vs one: {results[1.0][0] / results[0.25][0]:.2f}x throughput")


if __name__ == "__main__":
    main()
