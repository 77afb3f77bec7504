"""Benchmark: what each steering addition of issue 17 costs, per pack, on a real model, in one run.

A pack is what one Ray Tune trial of a steering sweep computes: one (family, seed) at one layer,
every strength x vector type (32 points in steering_migration). Timed, in process (no Ray, no
MLflow), after the clean baselines and vectors are cached, as a sweep's actor has them:

  forward      the steered forward of the pack (and the other families' for knock-outs): what a trial always did
  reliability  median, anti-steerable fraction, bootstrap interval, halves for every point
  geometry     cosine to mean_diff and pair consistency for every point
  transport    TrialResult.extra() of every point (per-item values, vectors as safetensors bytes)
  full         the kind's pack function as the sweep runs it (everything above, metrics included)
  baseline     the prompting baseline, once per (family, seed) (k-shot prompts, one forward)
  generation   the kind's pack function with `generate` on, minus `full`

Times are the median of --repeat runs; ratios are to `forward`.

    python benchmarks/steering_costs.py --model smollm2-135m --layer 14 --tokens 24
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from interventions.context import FamilyRun, TrialContext
from interventions.families import make_split
from interventions.kinds import run_pack
from interventions.models import load
from interventions.reliability import shift_metrics
from interventions.steering import _geometry, _shift, prompt_baseline, steered_logits, steering_vector


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", default="14", help="a layer, or a set like 6,21")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--n-eval", type=int, default=12)
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a sweep actor uses resources.cpu)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.model)
    families = ["antonyms", "capitalization", "factual_recall"]
    runs = [FamilyRun(model, make_split(f, 0, model.tokenizer, args.n_train, args.n_eval, ".")) for f in families]
    layer = [int(x) for x in args.layer.split(",")] if "," in args.layer else int(args.layer)
    points = [{"layer": layer, "strength": s, "vector_type": v} for s in (-1, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1)
              for v in ("mean_diff", "pca", "probe", "random")]
    ctx = TrialContext(model, 0, runs[0], runs[1:], options={"baseline": {"shots": args.shots}, "generate": None})
    gen = TrialContext(model, 0, runs[0], runs[1:], options={"baseline": {"shots": args.shots},
                                                              "generate": {"tokens": args.tokens}})
    layers = [layer] if isinstance(layer, int) else layer
    results = run_pack("steering", ctx, points)  # warm: clean runs, vectors, k-shot logits cached
    run_pack("steering", gen, points[:1])  # warm: the unsteered continuations and neutral prompts cached
    run = runs[0]
    deltas = [{L: p["strength"] * run.resid_norm(L) * steering_vector(ctx, L, p["vector_type"]) for L in layers}
              for p in points]
    knock = [d for d, p in zip(deltas, points) if p["strength"] < 0]

    def forward():
        steered_logits(model, run.eval_batch, run.clean_resid, deltas)
        for other in runs[1:]:
            steered_logits(model, other.eval_batch, other.clean_resid, knock)

    logits = steered_logits(model, run.eval_batch, run.clean_resid, deltas)
    shifts = [_shift(run, x) for x in logits]
    rows = {
        "forward": timed(forward, args.repeat),
        "reliability": timed(lambda: [shift_metrics(b - a, p["strength"], 0, run.split.family)
                                      for (a, b), p in zip(shifts, points)], args.repeat),
        "geometry": timed(lambda: [_geometry(ctx, layers, p["vector_type"]) for p in points], args.repeat),
        "transport": timed(lambda: [r.extra() for r in results], args.repeat),
        "full": timed(lambda: run_pack("steering", ctx, points), args.repeat),
        "baseline": timed(lambda: (run._memo.pop(("kshot", args.shots), None), prompt_baseline(ctx)), args.repeat),
    }
    rows["generation"] = timed(lambda: run_pack("steering", gen, points), args.repeat) - rows["full"]
    print(f"{args.model}, layer {args.layer}, {len(points)} points per pack, n_eval {args.n_eval}, "
          f"{args.threads} thread(s), generate {args.tokens} tokens; median of {args.repeat}")
    for name, seconds in rows.items():
        print(f"  {name:12s} {seconds:8.3f} s   {seconds / rows['forward']:6.2f} x forward")


if __name__ == "__main__":
    main()
