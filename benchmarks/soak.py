"""Soak: 1,000 tiny-model trials in one actor; RSS before and after, and the forward hooks left (must be 0).

Each trial is what `orchestrator.worker.run_trial` does on an actor, minus `tune.report`:
`worker.trial_context` (the actor's cached model and (family, seed) baselines, evicted past
`worker.MAX_CACHED_RUNS`) then the kind's trial function, then a count of the hooks left on the
model. The grid has 16 trials per (family, seed) pair and goes through 62 pairs in 1,000 trials,
far more than the actor's cache keeps (16): by the warm-up reading (300 trials) the cache is
full, and from then on every new pair evicts one, so steady RSS means nothing accumulates. By default the loop
runs inside one Ray actor (one process, as in a sweep);
`--in-process` runs it here without Ray.

    python benchmarks/soak.py                 # 1,000 trials in one Ray actor
    python benchmarks/soak.py --trials 3000 --in-process

RSS is read from /proc (VmRSS, VmHWM) after a gc.collect(): at the start (packages imported, no
model), after a warm-up (model loaded, first `--warmup` trials), and at the end. Growth between
the warm-up and the end, per trial, is what a leak would show.
"""
from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

SPEC = """\
name: soak
model: tiny-llama
kind: steering
n_train: 8
n_eval: 6
axes:
  seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]
  layer: [0, 1, 2, 3]
  strength: [-1.0, 1.0]
  vector_type: [mean_diff, probe]
  family: [antonyms, capitalization, copying]
"""


def rss_mib() -> dict[str, float]:
    """Current and peak resident set size of this process, MiB."""
    gc.collect()
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return {"rss": round(fields["VmRSS"], 1), "peak": round(fields["VmHWM"], 1)}


def soak(spec_text: str, trials: int, warmup: int) -> dict:
    """The actor side: run `trials` grid points through the worker's code path; report memory and hooks."""
    import torch

    from interventions.hooks import count_hooks
    from interventions.kinds import run_kind
    from orchestrator import worker
    from orchestrator.driver import worker_settings
    from orchestrator.grid import expand
    from orchestrator.spec import load_sweep

    torch.set_num_threads(1)  # as a sweep's actor with resources.cpu: 1
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "soak.yaml").write_text(spec_text)
        sweep = load_sweep(Path(tmp) / "soak.yaml")
    points = expand(sweep)
    settings, splits = worker_settings(sweep), {part.name: part.splits for part in sweep.parts}
    points = (points * (trials // len(points) + 1))[:trials]  # more trials than grid points: go round again
    before = rss_mib()
    hooks_seen, pairs = 0, set()
    start = time.perf_counter()
    warm = None
    for i, point in enumerate(points):
        pack = [{"point": point.values, "trial_id": point.trial_id, "model": point.model}]
        ctx = worker.trial_context(settings, pack, splits)
        run_kind(sweep.kind.name, ctx, point.values)
        hooks_seen += count_hooks(ctx.model.module)  # run_trial fails the trial if this is ever > 0
        pairs.add((point.values["family"], point.values["seed"]))
        if i + 1 == warmup:
            warm = rss_mib()
            warm_time = time.perf_counter()
    end = rss_mib()
    seconds = time.perf_counter() - start
    model = next(iter(worker._MODEL.values()))
    return {
        "trials": len(points), "grid_points": len(expand(sweep)), "family_seed_pairs": len(pairs),
        "cached_pairs_max": worker.MAX_CACHED_RUNS, "model_loads": worker.MODEL_LOADS,
        "rss_before_mib": before["rss"], "rss_after_warmup_mib": warm["rss"], "rss_after_mib": end["rss"],
        "rss_peak_mib": end["peak"],
        "growth_after_warmup_kib_per_trial": round((end["rss"] - warm["rss"]) * 1024 / (len(points) - warmup), 2),
        "hooks_left_total": hooks_seen, "hooks_left_at_end": count_hooks(model.module),
        "seconds": round(seconds, 1), "ms_per_trial_after_warmup": round(
            (time.perf_counter() - warm_time) * 1000 / (len(points) - warmup), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=300,
                        help="trials before the 'after warm-up' reading (by then the baseline cache is full)")
    parser.add_argument("--in-process", action="store_true", help="run the loop here instead of in one Ray actor")
    args = parser.parse_args()
    if args.in_process:
        report = soak(SPEC, args.trials, args.warmup)
    else:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
        try:
            report = ray.get(ray.remote(num_cpus=1)(soak).remote(SPEC, args.trials, args.warmup))
        finally:
            ray.shutdown()
    report["where"] = "in-process" if args.in_process else "one Ray actor"
    print(json.dumps(report, indent=2))
    if report["hooks_left_total"] or report["hooks_left_at_end"]:
        raise SystemExit("forward hooks were left on the model")


if __name__ == "__main__":
    main()
