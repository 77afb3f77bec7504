"""Benchmark: a head atlas run exactly vs screened (attribution estimates, then exact trials for the top-k and a
random sample), in one process, with the agreement figures beside the speed figure.

Grid: every head x every layer (plus the attn and mlp of every layer) x methods x families x 1 seed on one model
(default the embedded smollm2-135m; `--model qwen2.5-coder-0.5b` once the model packs are installed).
Both sides call the orchestrator's own functions in this process (no Ray, no MLflow), start from a fresh
FamilyRun per (family, seed) and repetition (baselines, means and train values inside the timing):

- exact: `run_pack("ablation", ...)` on every point, packed as a sweep packs them (one forward per component and
  layer, heads x methods stacked);
- screened, once per `--estimates` entry side by side: the estimate on every point (attribution: one forward and
  one backward per family and run; ig:k: k per (component, method); ig_layer:k: k per layer too), then `run_pack`
  on the verify set `orchestrator.screen.select` picks: the top-k by |estimate| per
  (component, method) plus a seeded sample of the rest, packed alike.

Agreement is measured on the fully exact grid (which the exact side computed): per (component, method), Spearman
of estimated vs exact ld_drop over every point and over the verified ones, recall@k (share of the exact top-k by
|LD shift| inside the estimated top-k) and the largest exact |LD shift| the screen ranked outside its top-k.
The sides are interleaved family by family (rotating which goes first); figures are medians of `--repeats`.

    PYTHONPATH=. python benchmarks/head_atlas_screen.py                      # ~15 min on 2 busy cores
    PYTHONPATH=. python benchmarks/head_atlas_screen.py --repeats 1 --methods zero
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import torch
import transformers

from interventions.attribution import ESTIMATES
from interventions.context import FamilyRun, TrialContext
from interventions.families import make_split
from interventions.kinds import run_pack
from interventions.models import EMBEDDED, MODELS, load
from interventions.registry import AtlasError
from orchestrator.report.screen import agreement
from orchestrator.screen import select


def grid(layers: list[int], n_heads: int, components: list[str], methods: list[str]) -> list[list[dict]]:
    """Packs as a sweep makes them: per (component, layer), every head x method in one forward (at most 32)."""
    packs = []
    for component in components:
        for layer in layers:
            heads = range(n_heads) if component == "head" else [None]
            points = [{"component": component, "layer": layer, "method": m, **({} if h is None else {"head": h})}
                      for h in heads for m in methods]
            packs += [points[i:i + 32] for i in range(0, len(points), 32)]
    return packs


def exact(run: FamilyRun, seed: int, packs: list[list[dict]]) -> list[dict]:
    ctx = TrialContext(run.model, seed, run)
    return [r.metrics for pack in packs for r in run_pack("ablation", ctx, pack)]


def estimated(run: FamilyRun, seed: int, packs: list[list[dict]], name: str = "attribution",
              steps: str | None = None) -> tuple[list[dict], list[dict]]:
    """The estimate `name` (ESTIMATES; `steps` for ig) of every point of one (family, seed)."""
    points = [p for pack in packs for p in pack]
    params = {} if steps is None else {"steps": int(steps)}
    return ESTIMATES.get(name).fn(TrialContext(run.model, seed, run), points, **params), points


def verify(model, splits: dict, seed: int, packs: list[list[dict]], estimates: dict, top: int,
           rand: int) -> tuple[dict, dict]:
    """The verify set over all families at once (top-k per (component, method), as a screen picks), run packed on
    fresh baselines (a sweep verifies on new actors)."""
    scores = {key: ((p["component"], p["method"]), e["ld_shift_estimate"]) for key, (p, e) in estimates.items()}
    chosen = select(scores, top, rand, 0)
    results = {}
    for family, split in splits.items():
        ctx = TrialContext(model, seed, FamilyRun(model, split))
        for pack in packs:
            todo = [p for p in pack if (family, key_of(p)) in chosen]
            if todo:
                for p, r in zip(todo, run_pack("ablation", ctx, todo)):
                    results[(family, key_of(p))] = r.metrics
    return chosen, results


def key_of(point: dict) -> tuple:
    return point["component"], point["layer"], point.get("head", -1), point["method"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--families", default="factual_recall,antonyms,induction")
    parser.add_argument("--components", default="head,attn,mlp")
    parser.add_argument("--methods", default="zero,clean_to_corrupt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-eval", type=int, default=8)
    parser.add_argument("--estimates", default="attribution,ig:4,ig:8,ig:16",
                        help="screens side by side: ESTIMATES names, :k for ig / ig_layer steps")
    parser.add_argument("--top", type=int, default=20, help="screen.verify_top")
    parser.add_argument("--random", type=int, default=10, help="screen.verify_random")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layer-step", type=int, default=1, help="every n-th layer only (1: every layer)")
    args = parser.parse_args()
    if args.model not in MODELS:
        raise SystemExit(f"model {args.model!r} is not available here (known: {', '.join(MODELS.names())}); the "
                         "qwen2.5-coder-0.5b pack comes with the model-packs issue")
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        model = load(args.model)
    except AtlasError as exc:
        raise SystemExit(f"model {args.model!r} could not be loaded: {exc}") from None
    families, methods = args.families.split(","), args.methods.split(",")
    splits = {f: make_split(f, args.seed, model.tokenizer, args.n_train, args.n_eval, None) for f in families}
    layers = list(range(0, model.n_layers, args.layer_step))
    packs = grid(layers, model.config.num_attention_heads, args.components.split(","), methods)
    n_points = sum(map(len, packs)) * len(families)

    screens = [e.split(":") for e in args.estimates.split(",")]  # name[:steps]
    labels = [":".join(e) for e in screens]
    times = {"exact": [], **{f"{k} {part}": [] for k in labels for part in ("screened", "estimates")}}
    tables, chosen_of = {}, {}
    for r in range(args.repeats):
        took = dict.fromkeys(times, 0.0)
        exact_out, estimates = {}, {k: {} for k in labels}
        for i, family in enumerate(families):
            sides = ["exact", *labels]
            sides = sides[(i + r) % len(sides):] + sides[:(i + r) % len(sides)]  # rotate which goes first
            for side in sides:
                run = FamilyRun(model, splits[family])
                start = time.perf_counter()
                if side == "exact":
                    out = exact(run, args.seed, packs)
                    took["exact"] += time.perf_counter() - start
                    points = [p for pack in packs for p in pack]
                    exact_out.update({(family, key_of(p)): m for p, m in zip(points, out)})
                else:
                    est, points = estimated(run, args.seed, packs, *screens[labels.index(side)])
                    spent = time.perf_counter() - start
                    took[f"{side} screened"] += spent
                    took[f"{side} estimates"] += spent
                    estimates[side].update({(family, key_of(p)): (p, e) for p, e in zip(points, est)})
        for label in labels:
            start = time.perf_counter()
            chosen, verified = verify(model, splits, args.seed, packs, estimates[label], args.top, args.random)
            took[f"{label} screened"] += time.perf_counter() - start
            if r == 0:
                for key, metrics in verified.items():  # the screen's exact runs are the exact grid's, to float noise
                    want = exact_out[key]["ld_drop"]
                    assert abs(metrics["ld_drop"] - want) < 1e-3 * max(1.0, abs(want)), (key, metrics, want)
                rows = [{"family": k[0], "component": k[1][0], "layer": k[1][1], "head": k[1][2], "method": k[1][3],
                         **e, "ld_drop": exact_out[k]["ld_drop"], "verify": chosen.get(k, "")}
                        for k, (_, e) in estimates[label].items()]
                tables[label], chosen_of[label] = pd.DataFrame(rows), chosen
        for name, t in took.items():
            times[name].append(t)
        print(f"repetition {r + 1}: " + ", ".join(f"{name} {t:.1f} s" for name, t in took.items()), flush=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    t_exact = statistics.median(times["exact"])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\nhead atlas on {args.model}: {n_points} points = components {args.components} x {len(layers)} of "
          f"{model.n_layers} layers (step {args.layer_step}; {model.config.num_attention_heads} heads) x methods "
          f"{args.methods} x families {args.families}, seed {args.seed}; n_eval {args.n_eval}, n_train {args.n_train}")
    print(f"machine: {os.cpu_count()} CPUs ({cpu}); torch {torch.__version__}, {args.threads} thread(s); load average "
          f"(1/5/15 min) {load_before} before, {load_after} after")
    print(f"screen: top {args.top} + {args.random} random per (component, method); {args.repeats} repetitions, "
          "median:")
    for name, t in times.items():
        print(f"  {name:24s} {statistics.median(t):8.1f} s  ({', '.join(f'{x:.1f}' for x in t)})")
    recall = f"recall@{args.top}"
    for label in labels:
        table = tables[label]
        full = agreement_with_k(table, args.top)  # every point exact: Spearman over all, recall@k with k = --top
        on_verified = agreement(table.assign(ld_drop=table["ld_drop"].where(table["verify"] != "")))
        t_screen = statistics.median(times[f"{label} screened"])
        paired = ", ".join(f"{a / b:.2f}" for a, b in zip(times["exact"], times[f"{label} screened"]))
        print(f"\n{label}: {len(chosen_of[label])} exact points of {n_points}; wall ratio exact / screened: "
              f"{t_exact / t_screen:.2f}x (per repetition: {paired})")
        print(f"  {'component/method':28s} {'Spearman all':>13s} {'Spearman verified':>18s} {recall:>10s}"
              f" {'largest |shift| outside top-k (rank)':>38s}")
        for (_, a), (_, v) in zip(full.iterrows(), on_verified.iterrows()):
            outside = f"{a['outside_max']:.3g} (#{int(a['outside_rank'])})" if not pd.isna(a["outside_max"]) else "–"
            print(f"  {a['component'] + '/' + a['method']:28s} {a['spearman']:13.3f} {v['spearman']:18.3f} "
                  f"{a['recall_at_k']:10.2f} {outside:>38s}")


def agreement_with_k(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """agreement() on the fully exact grid with the top-k marked by the estimate's rank (k = --top)."""
    from orchestrator.report.screen import ranked

    marked = ranked(table)
    marked["verify"] = ["top" if rank <= k else "" for rank in marked["rank"]]
    return agreement(marked.drop(columns=["rank", "exact_shift"]))


if __name__ == "__main__":
    main()
