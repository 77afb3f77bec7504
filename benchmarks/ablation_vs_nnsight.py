"""Benchmark: an ablation grid by the orchestrator's interventions vs the same grid written with nnsight, in one run.

Grid: component x layer x method on one (family, seed) of the embedded model (smollm2-135m,
30 layers) over the family's left-padded eval prompts. Both sides start from the same split and
the same token ids, attention mask and position ids; each computes its clean baseline and its
train activations (for `mean` and `resample`) once per repetition, inside its timing.

- ours: `interventions.kinds.run_pack("ablation", ...)` on a fresh FamilyRun, in this process
  (no Ray, no MLflow), with the points packed as a sweep packs them (`--pack`, the spec's
  `execution.pack`; 1: one trial per point). A trial restarts from the cached resid_pre[L]
  (the layers below L never run again) and unembeds the last position only.
- nnsight 0.8 (`pip install -e .[bench]`) written the way a researcher would: one trace of the
  clean prompts, one trace of the train prompts saving the grid's components, then one
  `model.trace(...)` of the whole model per grid point that sets the component's output at
  layer L (padding positions keep their value, as ours does) and saves the last position of
  `lm_head`'s output. It wraps a second copy of the weights (nnsight instruments what it wraps).

The two sides are interleaved pack by pack (rotating which goes first), so a busy shared machine
slows both alike; each side's time is the sum of its slices, and figures are medians over
`--repeats`. Before any figure is printed the sides must agree on every grid point's metrics
(KL within 1e-4 relative, 1e-7 absolute below KL 1e-3) and on the logits of the points at three
layers (max |diff| < 1e-3).

Defaults (a few minutes on 2 cores): components mlp, layer x every 4th layer x zero, mean,
resample = 48 points; family capitalization (its prompts differ in length, so left padding is
exercised), seed 0, n_eval 12, n_train 32; 1 torch thread on both sides.

    PYTHONPATH=. python benchmarks/ablation_vs_nnsight.py
    PYTHONPATH=. python benchmarks/ablation_vs_nnsight.py --components attn,mlp,layer --layer-step 1  # 270 points
    PYTHONPATH=. python benchmarks/ablation_vs_nnsight.py --layer-step 10 --repeats 1 --profile  # + cProfile of ours

With `--screen`, the grid is every head of every `--layer-step`-th layer x methods zero, mean (the head grid),
nnsight runs it exactly (one trace per point, each head set through `o_proj.input`), and ours screens it:
attribution estimates of every point (interventions/attribution.py), then exact trials for the verify set
(orchestrator.screen.select: the top `--top` by |estimate| per method plus `--random` seeded others). Before the
speed figure: ours and nnsight agree on every verified point (the same checks as above), and beside it, against
nnsight's exact results on every point: Spearman of our estimates, recall@top and the largest exact |LD shift|
the screen left out of its top-k.

    PYTHONPATH=. python benchmarks/ablation_vs_nnsight.py --screen --layer-step 1   # 30 layers x 9 heads x 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach the hub

import torch
import transformers

from interventions.ablation import ablated_logits, resample_choice
from interventions.components import Site
from interventions.context import FamilyRun, TrialContext
from interventions.families import make_split
from interventions.forward import encode, position_ids, single_token_ids
from interventions.kinds import run_pack
from interventions.metrics import agreement_metrics, logit_diff, mean, target_prob
from interventions.models import EMBEDDED, load


def ours(run: FamilyRun, seed: int, packs: list[list[dict]]):
    """Per pack: the orchestrator's ablation metrics (the FamilyRun computes its baselines on first use)."""
    ctx = TrialContext(run.model, seed, run)
    for pack in packs:
        yield [r.metrics for r in run_pack("ablation", ctx, pack)], None


def trial_metrics(clean, logits, target, distractor) -> dict[str, float]:
    out = agreement_metrics(clean, logits, target)
    out.update(target_prob_drop=mean(target_prob(clean, target) - target_prob(logits, target)),
               ld_drop=mean(logit_diff(clean, target, distractor) - logit_diff(logits, target, distractor)))
    return out


def with_nnsight(lm, tokenizer, split, seed: int, packs: list[list[dict]]):
    """Per pack: the same metrics (and logits) written with nnsight, one trace per grid point."""
    import nnsight

    ev, tr = (encode(tokenizer, [i.prompt for i in items]) for items in (split.eval, split.train))
    inputs = {"input_ids": ev.ids, "attention_mask": ev.mask, "position_ids": position_ids(ev.mask)}
    target, distractor = (single_token_ids(tokenizer, [getattr(i, k) for i in split.eval])
                          for k in ("target", "distractor"))
    layers = lm.model.layers
    with lm.trace(**inputs):  # the clean baseline, once
        clean = nnsight.save(lm.lm_head.output[:, -1])

    points = [p for pack in packs for p in pack]  # the train activations the grid needs, in one trace
    components, grid_layers = {p["component"] for p in points}, sorted({p["layer"] for p in points})
    train = {}
    with lm.trace(input_ids=tr.ids, attention_mask=tr.mask, position_ids=position_ids(tr.mask)):
        for L in grid_layers:
            pre = layers[L].input
            if "attn" in components:
                train["attn", L] = nnsight.save(layers[L].self_attn.o_proj.output)
            if "mlp" in components:
                train["mlp", L] = nnsight.save(layers[L].mlp.output)
            if "layer" in components:
                train["layer", L] = nnsight.save(layers[L].output - pre)
    means = {key: x[tr.mask.bool()].double().mean(0).float() for key, x in train.items()}  # over real tokens
    eval_lens, train_lens = ev.mask.sum(-1).tolist(), tr.mask.sum(-1).tolist()
    keep = ev.mask.bool()[:, :, None]  # padding positions keep their own value

    def replacement(component, L, method, live):
        if method == "zero":
            return torch.zeros_like(live)
        if method == "mean":
            return means[component, L].expand_as(live)
        out = live.clone()  # resample: a seeded train item per eval item, aligned from the end
        for i, n in enumerate(eval_lens):
            j = resample_choice(seed, Site(component, L), i, n, train_lens)
            k = min(n, train_lens[j])
            out[i, -k:] = train[component, L][j, -k:]
        return out

    for pack in packs:
        metrics, all_logits = [], []
        for point in pack:
            component, L, method = point["component"], point["layer"], point["method"]
            layer = layers[L]
            with lm.trace(**inputs):
                if component == "layer":
                    pre = layer.input
                    out = layer.output
                    layer.output = torch.where(keep, pre + replacement(component, L, method, out - pre), out)
                else:
                    module = layer.self_attn.o_proj if component == "attn" else layer.mlp
                    live = module.output
                    module.output = torch.where(keep, replacement(component, L, method, live), live)
                logits = nnsight.save(lm.lm_head.output[:, -1])
            metrics.append(trial_metrics(clean, logits, target, distractor))
            all_logits.append(logits)
        yield metrics, all_logits


def interleaved(sides: dict, steps: int, first: int) -> dict[str, list]:
    """Advance the sides' generators one pack at a time, rotating which goes first; per side
    [seconds, metrics, logits]."""
    names = list(sides)
    out = {name: [0.0, [], []] for name in names}
    for step in range(steps):
        k = (first + step) % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            metrics, logits = next(sides[name])
            out[name][0] += time.perf_counter() - start
            out[name][1] += metrics
            out[name][2] += logits or [None] * len(metrics)
    return out


def check_same(points, ours_metrics, nn_metrics, nn_logits, run: FamilyRun, seed: int,
               heads: bool = False) -> tuple[float, float, int]:
    """Assert both sides computed the same thing; the worst KL relative difference and logits max |diff|."""
    worst_kl = 0.0
    for point, a, b in zip(points, ours_metrics, nn_metrics, strict=True):
        # relative, floored at KL 1e-3: a single head's KL can be ~1e-5, where float32 noise alone is 1e-4 of it
        rel = abs(a["kl"] - b["kl"]) / max(abs(a["kl"]), 1e-3)
        worst_kl = max(worst_kl, rel)
        assert rel < 1e-4, (point, "kl", a["kl"], b["kl"])
        for key in ("ld_drop", "target_prob_drop"):
            assert abs(a[key] - b[key]) < 1e-3, (point, key, a[key], b[key])
        assert a["top1_agreement"] == b["top1_agreement"], (point, a, b)
    grid_layers = sorted({p["layer"] for p in points})
    sample = {grid_layers[0], grid_layers[len(grid_layers) // 2], grid_layers[-1]}
    worst_logits, checked = 0.0, 0
    for point, logits in zip(points, nn_logits):
        if point["layer"] in sample:
            site = Site(point["component"], point["layer"], (point["head"],) if heads else ())
            ours_logits = ablated_logits(run, seed, site, point["method"])
            diff = float((ours_logits - logits).abs().max())
            worst_logits, checked = max(worst_logits, diff), checked + 1
            assert diff < 1e-3, (point, "logits max |diff|", diff)
    return worst_kl, worst_logits, checked


@torch.no_grad()
def forward_costs(model, split, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one plain full forward over the eval prompts, unembedding every / the last position
    (alternated, so that both see the same load)."""
    ev = encode(model.tokenizer, [i.prompt for i in split.eval])
    kw = {"input_ids": ev.ids, "attention_mask": ev.mask, "position_ids": position_ids(ev.mask)}
    variants = {"all": {}, "last": {"use_cache": False, "logits_to_keep": 1}}
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, extra in variants.items():
            start = time.perf_counter()
            model.module(**kw, **extra)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def nnsight_heads(lm, tokenizer, split, points: list[dict]) -> tuple[list[dict], list]:
    """The head grid written with nnsight: one trace per point setting head h's slice of o_proj's input."""
    import nnsight

    ev, tr = (encode(tokenizer, [i.prompt for i in items]) for items in (split.eval, split.train))
    inputs = {"input_ids": ev.ids, "attention_mask": ev.mask, "position_ids": position_ids(ev.mask)}
    target, distractor = (single_token_ids(tokenizer, [getattr(i, k) for i in split.eval])
                          for k in ("target", "distractor"))
    layers, n_heads = lm.model.layers, lm.config.num_attention_heads
    with lm.trace(**inputs):
        clean = nnsight.save(lm.lm_head.output[:, -1])
    grid_layers = sorted({p["layer"] for p in points})
    train = {}
    with lm.trace(input_ids=tr.ids, attention_mask=tr.mask, position_ids=position_ids(tr.mask)):
        for L in grid_layers:
            train[L] = nnsight.save(layers[L].self_attn.o_proj.input)
    means = {L: x[tr.mask.bool()].double().mean(0).float().unflatten(-1, (n_heads, -1)) for L, x in train.items()}
    keep = ev.mask.bool()[:, :, None]
    metrics, all_logits = [], []
    for point in points:
        L, h = point["layer"], point["head"]
        o_proj = layers[L].self_attn.o_proj
        with lm.trace(**inputs):
            live = o_proj.input.unflatten(-1, (n_heads, -1))
            new = live.clone()
            new[:, :, h] = torch.where(keep, means[L][h].expand_as(live[:, :, h]) if point["method"] == "mean"
                                       else torch.zeros_like(live[:, :, h]), live[:, :, h])
            o_proj.input = new.flatten(-2)
            logits = nnsight.save(lm.lm_head.output[:, -1])
        metrics.append(trial_metrics(clean, logits, target, distractor))
        all_logits.append(logits)
    return metrics, all_logits


def ours_screened(run: FamilyRun, seed: int, points: list[dict], top: int, rand: int):
    """Ours, screened: estimates of every point, then the verify set run exactly (packed by layer)."""
    from interventions.attribution import attribution
    from orchestrator.screen import select

    ctx = TrialContext(run.model, seed, run)
    estimates = attribution(ctx, points)
    scores = {i: ((p["component"], p["method"]), e["ld_shift_estimate"]) for i, (p, e) in
              enumerate(zip(points, estimates))}
    chosen = select(scores, top, rand, 0)
    exact = {}
    for layer in sorted({p["layer"] for p in points}):
        todo = [i for i, p in enumerate(points) if p["layer"] == layer and i in chosen]
        for k in range(0, len(todo), 32):
            for i, r in zip(todo[k:k + 32], run_pack("ablation", ctx, [points[i] for i in todo[k:k + 32]])):
                exact[i] = r.metrics
    return estimates, chosen, exact


def screen_main(args, model, other, lm) -> None:
    """--screen: nnsight exact vs ours screened on the head grid; agreement beside speed."""
    import pandas as pd

    from orchestrator.report.screen import agreement, ranked

    split = make_split(args.family, args.seed, model.tokenizer, args.n_train, args.n_eval, None)
    methods = [m for m in args.methods.split(",") if m in ("zero", "mean")] or ["zero", "mean"]
    points = [{"component": "head", "layer": L, "head": h, "method": m}
              for L in range(0, model.n_layers, args.layer_step) for h in range(model.config.num_attention_heads)
              for m in methods]
    times = {"nnsight exact": [], "ours screened": []}
    for r in range(args.repeats):
        for side in (["nnsight exact", "ours screened"] if r % 2 == 0 else ["ours screened", "nnsight exact"]):
            start = time.perf_counter()
            if side == "nnsight exact":
                nn_metrics, nn_logits = nnsight_heads(lm, other.tokenizer, split, points)
            else:
                run = FamilyRun(model, split)
                estimates, chosen, exact = ours_screened(run, args.seed, points, args.top, args.random)
            times[side].append(time.perf_counter() - start)
    verified = sorted(exact)
    worst_kl, worst_logits, checked = check_same([points[i] for i in verified], [exact[i] for i in verified],
                                                 [nn_metrics[i] for i in verified], [nn_logits[i] for i in verified],
                                                 run, args.seed, heads=True)
    table = pd.DataFrame([{**p, **e, "ld_drop": nn["ld_drop"], "family": args.family, "seed": args.seed}
                          for p, e, nn in zip(points, estimates, nn_metrics)])
    marked = ranked(table)
    marked["verify"] = ["top" if rank <= args.top else "" for rank in marked["rank"]]
    stats = agreement(marked.drop(columns=["rank", "exact_shift"]))
    t_nn, t_ours = statistics.median(times["nnsight exact"]), statistics.median(times["ours screened"])
    print(f"\nhead grid on {EMBEDDED}: {len(points)} points = {len(range(0, model.n_layers, args.layer_step))} layers "
          f"x {model.config.num_attention_heads} heads x methods {','.join(methods)}; family {args.family}, seed "
          f"{args.seed}, n_eval {args.n_eval}, n_train {args.n_train}; {torch.get_num_threads()} torch thread(s); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"ours screened: attribution estimates of all {len(points)} points, then {len(verified)} exact "
          f"(top {args.top} + {args.random} random per method)")
    print(f"correctness on the {len(verified)} verified points: worst KL relative difference {worst_kl:.1e} < 1e-4, "
          f"logits of {checked} points max |diff| {worst_logits:.1e} < 1e-3")
    print("agreement of our estimates with nnsight's exact ld_drop, every point:")
    for _, s in stats.iterrows():
        print(f"  head/{s['method']}: Spearman {s['spearman']:.3f}, recall@{args.top} {s['recall_at_k']:.2f}, "
              f"largest exact |LD shift| outside our top-{args.top}: {s['outside_max']:.3g} (ranked "
              f"#{int(s['outside_rank'])}), smallest inside: {s['inside_min']:.3g}")
    print(f"{args.repeats} repetitions, median: nnsight exact {t_nn:.1f} s "
          f"({', '.join(f'{x:.1f}' for x in times['nnsight exact'])}), ours screened {t_ours:.1f} s "
          f"({', '.join(f'{x:.1f}' for x in times['ours screened'])})")
    print(f"ratio nnsight exact / ours screened: {t_nn / t_ours:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", default="mlp,layer", help="of attn, mlp, layer")
    parser.add_argument("--methods", default="zero,mean,resample", help="of zero, mean, resample")
    parser.add_argument("--layer-step", type=int, default=4, help="every k-th layer from 0 (1: all 30)")
    parser.add_argument("--family", default="capitalization",
                        help="default: its prompts differ in length, so left padding is exercised (antonyms' do not)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--n-eval", type=int, default=12)
    parser.add_argument("--pack", type=int, default=32, help="ours: grid points per batched call, as the spec's "
                        "execution.pack (1: one trial per point)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides (1: as a sweep's actor "
                        "with resources.cpu 1; on a shared machine more threads stall on each other)")
    parser.add_argument("--profile", action="store_true", help="then run ours once more under cProfile")
    parser.add_argument("--screen", action="store_true", help="the head grid: nnsight exact vs ours screened")
    parser.add_argument("--top", type=int, default=20, help="--screen: exact trials for the top-k per method")
    parser.add_argument("--random", type=int, default=10, help="--screen: and a seeded sample of the rest")
    args = parser.parse_args()
    from nnsight import __version__ as nnsight_version
    from nnsight.modeling.transformers import TransformersModel

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    model, other = load(EMBEDDED), load(EMBEDDED)
    lm = TransformersModel(other.module, tokenizer=other.tokenizer)
    if args.screen:
        with lm.trace(input_ids=torch.tensor([[1, 2, 3]])):
            pass
        return screen_main(args, model, other, lm)
    split = make_split(args.family, args.seed, model.tokenizer, args.n_train, args.n_eval, None)
    layers = range(0, model.n_layers, args.layer_step)
    methods = args.methods.split(",")
    packs = [[{"component": c, "layer": L, "method": m} for m in methods[i:i + args.pack]]
             for c in args.components.split(",") for L in layers for i in range(0, len(methods), args.pack)]
    points = [p for pack in packs for p in pack]
    costs = forward_costs(model, split)  # also warms both copies up
    with lm.trace(input_ids=torch.tensor([[1, 2, 3]])):
        pass

    ours_name = f"ours (run_pack, pack {args.pack}, in process)"
    nn_name = f"nnsight {nnsight_version}, one trace per point"
    times = {ours_name: [], nn_name: []}
    for r in range(args.repeats):
        run = FamilyRun(model, split)  # cold: baselines, means and train values are computed inside the timing
        result = interleaved({ours_name: ours(run, args.seed, packs),
                              nn_name: with_nnsight(lm, other.tokenizer, split, args.seed, packs)}, len(packs), r)
        for name in times:
            times[name].append(result[name][0])
        if r == 0:  # a speed ratio between two different computations means nothing: check first
            kls = [m["kl"] for m in result[ours_name][1]]
            worst_kl, worst_logits, checked = check_same(points, result[ours_name][1], *result[nn_name][1:], run,
                                                         args.seed)
        del result, run
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    t_ours, t_nn, n = statistics.median(times[ours_name]), statistics.median(times[nn_name]), len(points)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lens = encode(model.tokenizer, [i.prompt for i in split.eval]).mask.sum(-1).tolist()
    runs_layers = statistics.mean(model.n_layers - p["layer"] - (p["component"] == "layer") for p in points)
    print(f"\nablation grid on {EMBEDDED}: {n} points = components {args.components} x {len(layers)} layers "
          f"(every {args.layer_step}) x methods {args.methods}")
    print(f"family {args.family}, seed {args.seed}: n_eval {args.n_eval} (prompts of {min(lens)}-{max(lens)} tokens, "
          f"left-padded), n_train {args.n_train}")
    print(f"machine: {os.cpu_count()} CPUs ({cpu}); torch {torch.__version__} with {torch.get_num_threads()} threads "
          f"on both sides; transformers {transformers.__version__}")
    print(f"load average (1/5/15 min): {load_before} before, {load_after} after")
    print(f"correctness: all {n} points (KL {min(kls):.2g} to {max(kls):.2g}) agree (worst KL relative difference "
          f"{worst_kl:.1e} < 1e-4; top1_agreement equal; ld_drop, target_prob_drop within 1e-3); logits of "
          f"{checked} points (layers at both ends and the middle): max |diff| {worst_logits:.1e} < 1e-3")
    print(f"{args.repeats} repetitions (seconds each), median:")
    for name, t in times.items():
        median = statistics.median(t)
        print(f"  {name:42s} {median:7.2f} s  {median / n * 1000:6.1f} ms/point  ({', '.join(f'{x:.1f}' for x in t)})")
    paired = ", ".join(f"{b / a:.2f}" for a, b in zip(times[ours_name], times[nn_name]))
    print(f"ratio nnsight / ours: {t_nn / t_ours:.2f}x (the same repetition's pair: {paired})")
    saved = 1 - costs["last"] / costs["all"]
    print("where the time goes, ms per grid point (plain forwards over the eval prompts: median of 5):")
    for label, seconds in (("full forward, logits at every position (what a trace runs)", costs["all"]),
                           (f"full forward, last-position logits only (saves {saved:.0%})", costs["last"]),
                           ("nnsight, its setup (clean + train traces) and tracing included", t_nn / n),
                           (f"ours, its setup included; prefix reuse: {runs_layers:.1f} of {model.n_layers} layers run",
                            t_ours / n)):
        print(f"  {label:64s}: {seconds * 1000:6.1f}")
    if args.profile:
        profile_ours(model, split, packs, args.seed)


def profile_ours(model, split, packs, seed: int) -> None:
    """Ours once more under cProfile: the share of the baselines and captures, the trial forwards, the matmuls."""
    import cProfile
    import pstats

    profiler, run = cProfile.Profile(), FamilyRun(model, split)
    profiler.runcall(lambda: list(ours(run, seed, packs)))
    stats = pstats.Stats(profiler)
    total = max(ct for (_, _, _, ct, _) in stats.stats.values())
    print(f"\nours under cProfile: {total:.1f} s")
    for label, name in (("clean baseline (clean_run)", "clean_run"), ("captures (capture_all)", "capture_all"),
                        ("trial forwards (patched_logits)", "patched_logits"),
                        ("torch linear (matmuls)", "<built-in method torch._C._nn.linear>")):
        calls = [(nc, ct) for (_, _, fn), (_, nc, _, ct, _) in stats.stats.items() if fn == name]
        ct = max((c for _, c in calls), default=0.0)  # the outermost entry (recursion-free functions here)
        print(f"  {label:34s} {ct:6.1f} s  {ct / total:4.0%}  ({sum(n for n, _ in calls)} calls)")
    stats.sort_stats("cumulative").print_stats(r"interventions/", 12)


if __name__ == "__main__":
    main()
