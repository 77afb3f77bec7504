"""Benchmark: compute efficiency (model FLOP/s against this machine's dense matmul rate) of a sweep and of two plain
PyTorch loops doing the same arithmetic, on a steering grid and a small head atlas, in one run.

For each grid (SmolLM2-135M, float32, one family, one seed):

  sweep    run_sweep (Ray Tune actors with 1 CPU each, MLflow): the FLOPs its trials report per trial-second
  in-process  the sweep's packed trial functions called in this process (no Ray, no MLflow, one actor's work)
  stacked  a plain loop, clean stream cached: per layer (and vector type) every strength (every head) stacked into
           one batch that starts at that layer, the decoder layers called directly
  naive    a plain loop: one hooked full forward per grid point

The loops run in this process at 1 torch thread (what a `cpu: 1` actor gets); their FLOPs are counted by the same
`interventions.flops.counting` (from layer input shapes), baselines and vectors included on every side. Each rate
is divided by two dense float32 matmul rates at 1 thread (timed by CPU time, so other processes do not lower
them): at its own largest (rows x d_model x d_ff) shape (the sweep's is what its actors measured; a naive loop's
small batches are slower matmuls), and at one reference shape (2048 rows, measured here for 1 s) that puts every
side on one scale. `ratio` and `/ ref` use wall seconds, so on a shared machine they include the CPU share each
side got; `CPU` is FLOPs per CPU-second over the own-shape rate, the figure other load does not move. Beside the
speed: the largest difference of each side's primary metric from the sweep's (ld_delta, ld_drop).

    PYTHONPATH=. python benchmarks/efficiency.py                 # ~5 min on 2 shared cores
    PYTHONPATH=. python benchmarks/efficiency.py --layers 6,14,22  # a smaller steering grid
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from transformers.masking_utils import create_causal_mask

from interventions.context import FamilyRun, TrialContext, seeded_generator
from interventions.flops import counting, matmul_rate, rate_rows
from interventions.kinds import run_pack
from interventions.metrics import logit_diff
from interventions.models import load
from interventions.steering import VECTORS
from orchestrator.efficiency import si
from orchestrator.grid import expand, packs
from orchestrator.runner import run_sweep
from orchestrator.spec import load_sweep
from orchestrator.store import resolve_uri
from orchestrator.tracking import Tracker

STEERING = """name: efficiency_steering
model: smollm2-135m
kind: steering
n_train: 32
n_eval: 12
axes:
  seed: [0]
  family: [antonyms]
  layer: {layers}
  strength: [-1, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1]
  vector_type: [mean_diff, random]
resources: {{cpu: 1, gpu: 0}}
"""
HEADS = """name: efficiency_heads
model: smollm2-135m
kind: ablation
n_train: 16
n_eval: 12
axes:
  seed: [0]
  family: [antonyms]
  component: [head]
  head: all
  method: [zero]
  layer: {layers}
resources: {{cpu: 1, gpu: 0}}
"""


def through(model, hidden, mask, start: int) -> torch.Tensor:
    """Layers start.. of a Llama-family decoder called directly; final norm and lm_head on the last position."""
    inner = model.module.model
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    causal = create_causal_mask(config=model.module.config, inputs_embeds=hidden, attention_mask=mask, cache=None,
                                position_ids=pos)
    rotary = inner.rotary_emb(hidden, pos)
    for layer in inner.layers[start:]:
        out = layer(hidden, attention_mask=causal, position_ids=pos, position_embeddings=rotary)
        hidden = out[0] if isinstance(out, tuple) else out
    return model.module.lm_head(inner.norm(hidden[:, -1:].contiguous()))[:, -1].float()


def full(model, batch, hooks=()) -> tuple[torch.Tensor, tuple]:
    """One full forward with forward hooks [(module, fn, pre)]: last-position logits and the hidden states."""
    handles = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, fn, pre in hooks]
    try:
        out = model.module(input_ids=batch.ids, attention_mask=batch.mask, position_ids=(batch.mask.cumsum(-1) - 1)
                           .clamp(min=0), use_cache=False, logits_to_keep=1, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out.logits[:, -1].float(), out.hidden_states


def steering_loop(model, run, points, stacked: bool) -> dict:
    """ld_delta per (layer, strength, vector_type)."""
    batch, mask = run.eval_batch, run.eval_batch.mask
    clean, hidden = full(model, batch)
    ld_clean = logit_diff(clean, run.target, run.distractor)
    out = {}
    for layer, vector_type in dict.fromkeys((p["layer"], p["vector_type"]) for p in points):
        v = VECTORS.get(vector_type)(run.train_acts(layer), seeded_generator(0, layer))
        strengths = [p["strength"] for p in points if (p["layer"], p["vector_type"]) == (layer, vector_type)]
        deltas = [s * run.resid_norm(layer) * mask[..., None].float() * v for s in strengths]
        if stacked:  # hidden_states[L + 1] is resid_post[L] below the last layer
            starts = torch.cat([hidden[layer + 1] + d for d in deltas])
            logits = through(model, starts, mask.repeat(len(deltas), 1), layer + 1).split(len(mask))
        else:
            logits = [full(model, batch, [(model.module.model.layers[layer],
                                           lambda m, i, o, d=d: o + d if torch.is_tensor(o) else (o[0] + d, *o[1:]),
                                           False)])[0] for d in deltas]
        for s, lg in zip(strengths, logits):
            out[(layer, s, vector_type)] = float((logit_diff(lg, run.target, run.distractor) - ld_clean).mean())
    return out


def heads_loop(model, run, points, stacked: bool) -> dict:
    """ld_drop per (layer, head) of zeroing head h's slice of o_proj's input."""
    batch, mask = run.eval_batch, run.eval_batch.mask
    config = model.module.config
    heads, n = config.num_attention_heads, len(mask)
    clean, hidden = full(model, batch)
    ld_clean = logit_diff(clean, run.target, run.distractor)
    out = {}
    for layer in dict.fromkeys(p["layer"] for p in points):
        o_proj = model.module.model.layers[layer].self_attn.o_proj
        if stacked:
            def zero_each(m, args):
                x = args[0].clone().unflatten(-1, (heads, -1))  # (heads x n, pos, heads, d_head)
                for h in range(heads):
                    x[h * n:(h + 1) * n, :, h] = 0
                return (x.flatten(-2),)
            handle = o_proj.register_forward_pre_hook(zero_each)
            try:
                logits = through(model, hidden[layer].repeat(heads, 1, 1), mask.repeat(heads, 1), layer).split(n)
            finally:
                handle.remove()
        else:
            def zero(m, args, h):
                x = args[0].clone().unflatten(-1, (heads, -1))
                x[:, :, h] = 0
                return (x.flatten(-2),)
            logits = [full(model, batch, [(o_proj, lambda m, a, h=h: zero(m, a, h), True)])[0] for h in range(heads)]
        for h, lg in enumerate(logits):
            out[(layer, h)] = float((ld_clean - logit_diff(lg, run.target, run.distractor)).mean())
    return out


def sweep_side(sweep, tmp: str):
    """Run the sweep; (its efficiency metrics, primary metric by point key)."""
    uri = f"sqlite:///{tmp}/{sweep.spec.name}.db"
    outcome = run_sweep(sweep, tracking_uri=uri, console=Console(quiet=True), out_dir=Path(tmp) / sweep.spec.name)
    assert not outcome.failed and not outcome.interrupted, outcome
    finished = Tracker(resolve_uri(uri), sweep).finished()
    return outcome.efficiency.metrics(), {p.trial_id: (p.values, finished[p.trial_id]) for p in expand(sweep)}


def in_process(sweep, key, metric):
    """The sweep's own packed trial functions in this process (no Ray, no MLflow): its arithmetic, one thread."""
    def run_all(model, run, points, stacked):
        ctx = TrialContext(model, 0, run, [], sweep.spec.execution.prefix_reuse, sweep.options)
        grid = [p for p in expand(sweep) if p.values in points]
        return {key(p.values): r.metrics[metric] for pack in packs(sweep, grid)
                for p, r in zip(pack, run_pack(sweep.kind.name, ctx, [p.values for p in pack]))}
    return run_all


def loop_side(model, split, points, fn, stacked: bool) -> tuple[int, float, float, dict, int]:
    """(FLOPs, seconds, CPU seconds, results, most rows one layer ran) of one side, from a fresh FamilyRun
    (baselines and vectors inside the timing)."""
    run = FamilyRun(model, split)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad(), counting(model) as tally:
        results = fn(model, run, points, stacked)
    return tally.total, time.perf_counter() - start, time.process_time() - cpu, results, tally.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,6,10,14,18,22,26", help="steering layers (7 x 16 = 112 points)")
    parser.add_argument("--head-layers", default="4,14,24", help="head atlas layers (x 9 heads)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    grids = {"steering": (STEERING, args.layers, steering_loop, "ld_delta",
                          lambda v: (v["layer"], v["strength"], v["vector_type"])),
             "head atlas": (HEADS, args.head_layers, heads_loop, "ld_drop", lambda v: (v["layer"], v["head"]))}
    rows = []
    reference = None
    walls: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="atlas-efficiency-") as tmp:
        model = None
        for name, (text, layers, fn, metric, key) in grids.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.yaml"
            path.write_text(text.format(layers=f"[{layers}]"))
            sweep = load_sweep(path)
            ours, by_id = sweep_side(sweep, tmp)
            walls[name] = ours
            torch.set_num_threads(1)
            model = model or load(sweep.parts[0].name)
            split = sweep.parts[0].splits[("antonyms", 0)]
            points = [v for v, _ in by_id.values() if "layer" in v and v.get("vector_type", "") != "prompt"]
            truth = {key(v): m[metric] for v, m in by_id.values() if v in points}
            w = model.arch.widths(model.module.config)
            reference = reference or matmul_rate(2048, w.d_model, w.d_ff, 1, seconds=1.0)
            rows.append((name, "sweep", len(by_id), ours["model_flops"], ours["trial_compute_seconds"],
                         ours["model_flops"] / ours["flops_per_cpu_s"], ours["matmul_flops_per_s"], 0.0))
            sides = (("in-process", in_process(sweep, key, metric), False), ("stacked loop", fn, True),
                     ("naive loop", fn, False))
            for label, side, stacked in sides:
                flops, seconds, cpu, results, most = loop_side(model, split, points, side, stacked)
                rate = matmul_rate(rate_rows(most), w.d_model, w.d_ff, 1)
                worst = max(abs(results[k] - truth[k]) for k in truth)
                rows.append((name, label, len(results), flops, seconds, cpu, rate, worst))
    print(f"\nSmolLM2-135M float32, 1 torch thread per actor / loop; {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "after")
    print(f"reference dense matmul rate (2048 x {w.d_model} x {w.d_ff}, float32, 1 thread): {si(reference)}FLOP/s")
    print(f"{'grid':<11} {'side':<13} {'points':>6} {'FLOPs':>9} {'seconds':>8} {'CPU s':>6} {'FLOP/s':>9} "
          f"{'matmul':>9} {'ratio':>6} {'/ ref':>6} {'CPU':>6} {'max |diff| vs sweep':>20}")
    for name, side, n, flops, seconds, cpu, rate, worst in rows:
        achieved = flops / seconds
        print(f"{name:<11} {side:<13} {n:>6} {si(flops):>9} {seconds:>8.1f} {cpu:>6.1f} {si(achieved):>9} "
              f"{si(rate):>9} {achieved / rate:>6.1%} {achieved / reference:>6.1%} {flops / cpu / rate:>6.1%} "
              f"{'-' if side == 'sweep' else f'{worst:.1e}':>20}")
    for name, wall in walls.items():
        print(f"{name} sweep over its Tune wall (2 actors at once, start-up included): {si(wall['flops_per_wall_s'])}"
              f"FLOP/s in {wall['wall_s']:.1f} s = {wall['flops_per_wall_s'] / reference:.1%} of one thread's "
              "reference rate")


if __name__ == "__main__":
    main()
