"""Steering: the VECTORS registry (mean_diff, pca, probe, random), `steer`, and the steering kind.

A unit vector v is built at resid_post[L] from the family's train items; the trial adds
`strength * r_L * v` to resid_post[L] at every prompt position of the eval items and
runs the remaining layers from the cached clean residual. A `layer` value may be a set of
layers: the vector type built at each (on the clean model), each scaled by its own r_L, all
added at once. Besides the next-token metrics a trial logs per-item reliability
(reliability.py), the vector's cosine to mean_diff and the pairs' consistency, and, with the
spec's `generate`, judge-free generation metrics (generation.py). The prompting baseline
(prompting.py) runs as grid points of its own: `vector_type: prompt`, no layer, no strength.
"""
from __future__ import annotations

from itertools import product
from typing import Annotated, Callable, ClassVar

import torch
from pydantic import Field, FiniteFloat
from torch import Tensor

from interventions.context import TrainActs, TrialContext, seeded_generator
from interventions.families.pairs import warnings as pair_warnings
from interventions.forward import Batch, run_from
from interventions.generation import added
from interventions.kinds import CommonAxes, Option, TrialResult, axis, kind, registered
from interventions.layers import LayersOrSets, depth
from interventions.metrics import kl, logit_diff, mean, selectivity, steering_metrics, target_logprob
from interventions.registry import AtlasError, Registry
from interventions.reliability import cosine, pair_consistency, shift_metrics

VectorFn = Callable[[TrainActs, torch.Generator], Tensor]  # -> unit vector (d_model,)
VECTORS: Registry[VectorFn] = Registry("vector type")


def unit(v: Tensor) -> Tensor:
    return v / v.norm().clamp_min(1e-12)


@VECTORS.register("mean_diff")
def mean_diff(acts: TrainActs, gen: torch.Generator) -> Tensor:
    """Contrastive activation addition: mean(prompt+target) - mean(prompt+distractor)."""
    return unit((acts.with_target - acts.with_distractor).double().mean(0)).float()


@VECTORS.register("pca")
def pca(acts: TrainActs, gen: torch.Generator) -> Tensor:
    """First principal component of the (centred) paired differences, sign-aligned with mean_diff."""
    diffs = (acts.with_target - acts.with_distractor).double()  # (n_train, d_model)
    _, _, vh = torch.linalg.svd(diffs - diffs.mean(0), full_matrices=False)
    pc = vh[0]
    if pc @ diffs.mean(0) < 0:
        pc = -pc
    return unit(pc).float()


@VECTORS.register("probe")
def probe(acts: TrainActs, gen: torch.Generator, l2: float = 1e-2, steps: int = 200) -> Tensor:
    """Weights of an L2-regularised logistic-regression probe: prompt+target (1) vs prompt+distractor (0)."""
    x = torch.cat([acts.with_target, acts.with_distractor]).double()  # (2 n_train, d_model)
    y = torch.cat([torch.ones(len(acts.with_target)), torch.zeros(len(acts.with_distractor))]).double().to(x.device)
    centre, scale = x.mean(0), x.norm(dim=-1).mean()  # standardise so one l2 fits every layer's scale
    x = (x - centre) / scale
    w = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w @ w)
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    return unit(w.detach()).float()


@VECTORS.register("random")
def random(acts: TrainActs, gen: torch.Generator) -> Tensor:
    """A seeded Gaussian direction: the control."""
    direction = torch.randn(acts.prompt.shape[-1], generator=gen, dtype=torch.float64)
    return unit(direction).float().to(acts.prompt.device)


def steer(resid: Tensor, direction: Tensor, strength: float, resid_norm: float, mask: Tensor) -> Tensor:
    """Add strength * r_L * direction at every prompt position of resid (batch, pos, d_model); pads stay."""
    return resid + (strength * resid_norm) * mask[..., None].to(resid.dtype) * direction.to(resid.dtype)


PROMPT = "prompt"  # vector_type of the prompting baseline's grid points (no layer, no strength)


def layer_set(value: int | list[int]) -> list[int]:
    """A `layer` value as the list of layers it steers."""
    return [value] if isinstance(value, int) else list(value)




def steering_vector(ctx: TrialContext, layer: int, vector_type: str) -> Tensor:
    """The unit vector for (family, seed, layer, vector_type), built once per actor."""
    build = VECTORS.get(vector_type)
    return ctx.family.memo(
        ("vector", layer, vector_type),
        lambda: build(ctx.family.train_acts(layer), seeded_generator(ctx.seed, layer)),
    )


def vector_name(family: str, seed: int, layer: int, vector_type: str) -> str:
    """The name of a unit vector in a sweep's vectors.safetensors (`vector_type` "r_L": the layer's r_L)."""
    return f"{family}/seed={seed}/layer={layer}/{vector_type}"


def steered_logits(model, batch: Batch, resid: Callable[[int], Tensor], deltas: list[dict[int, Tensor]],
                   prefix_reuse: bool = True) -> list[Tensor]:
    """Last-position logits of `batch` once per point, each point's deltas (layer -> (d_model,)) added to
    resid_post[layer] at every real position; all points in one batched forward from the lowest layer, starting
    at its clean residual resid(layer) (batch, pos, d_model)."""
    layers = sorted(deltas[0])
    n, first = len(batch.ids), layers[0]
    stacked = batch.repeat(len(deltas))
    start = torch.cat([steer(resid(first), d[first], 1.0, 1.0, batch.mask) for d in deltas])
    later = {layer: torch.stack([d[layer] for d in deltas]).repeat_interleave(n, 0) for layer in layers[1:]}
    with added(model, later, stacked.mask):  # (points x n, d_model) each, at the layers above the first
        logits = run_from(model, start, stacked, first + 1, prefix_reuse=prefix_reuse)
    return list(logits.split(n))


class SteeringAxes(CommonAxes):
    layer: LayersOrSets  # a layer, or a set of layers steered at once ([6, 21]); `all`, {depth: [...]}, ...
    strength: axis(FiniteFloat)  # in units of r_L
    vector_type: axis(Annotated[str, registered(VECTORS)])


class Baseline(Option):
    """Steering's prompting baseline: the eval items after `shots` train demonstrations (0: off). On by default."""

    shots: int = Field(4, ge=0)
    every_point: ClassVar[bool] = False  # only the baseline's own grid points depend on it (shots is their value)
    on_by_default: ClassVar[bool] = True

    def check(self, spec) -> None:
        if self.shots > spec.n_train:
            raise AtlasError(f"shots: {self.shots} demonstrations come from the train items, but n_train is "
                             f"{spec.n_train}")


class Generate(Option):
    """Steering's generation metrics: a greedy continuation of `tokens` tokens per eval item. Off unless given."""

    tokens: int = Field(24, ge=1, le=512)
    every_point: ClassVar[bool] = True  # every grid point's numbers depend on it: part of every trial_id


def steering_points(axes: dict, info, options: dict) -> list[dict]:
    """The product of the kind's axes, plus one prompting-baseline point (per seed and family) unless shots is 0."""
    points = [{"layer": layer, "strength": s, "vector_type": v}
              for layer, s, v in product(axes["layer"], axes["strength"], axes["vector_type"])]
    shots = (options.get("baseline") or {}).get("shots", 0)
    return points + ([{"vector_type": PROMPT, "shots": shots}] if shots else [])


def logprob_drop(run, steered: Tensor) -> Tensor:
    """Per item: clean target log-prob minus steered target log-prob."""
    return target_logprob(run.clean_logits, run.target) - target_logprob(steered, run.target)


SHIFT = ("ld_delta_median", "anti_steerable_fraction", "ld_delta_ci_low", "ld_delta_ci_high", "ld_delta_select",
         "ld_delta_report")
GENERATION = ("target_hit_rate", "fluency_nll", "repetition", "distinct_2", "neutral_kl")
METRICS = ("ld_delta", "target_prob_clean", "target_prob_steered", "kl", "accuracy_clean", "accuracy_steered",
           "selectivity", "target_logprob_drop", "collateral_logprob_drop", *SHIFT, "cos_mean_diff",
           "pair_consistency", "depth", *GENERATION, *(f"{m}_clean" for m in GENERATION[:4]))


def _geometry(ctx: TrialContext, layers: list[int], vector_type: str) -> dict[str, float]:
    """The vector's cosine to mean_diff and the train pairs' consistency, averaged over the layers steered."""
    def at(layer: int) -> tuple[float, float]:
        acts = ctx.family.train_acts(layer)
        consistency = ctx.family.memo(("pair_consistency", layer),
                                      lambda: pair_consistency(acts.with_target - acts.with_distractor))
        cos = cosine(steering_vector(ctx, layer, vector_type), steering_vector(ctx, layer, "mean_diff"))
        return cos, consistency

    values = [at(layer) for layer in layers]
    return {"cos_mean_diff": sum(v[0] for v in values) / len(values),
            "pair_consistency": sum(v[1] for v in values) / len(values)}


def _shift(run, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per item: LD clean and LD under `logits`."""
    return logit_diff(run.clean_logits, run.target, run.distractor), logit_diff(logits, run.target, run.distractor)


def prompt_baseline(ctx: TrialContext) -> TrialResult:
    """The prompting baseline: the eval items after `shots` train demonstrations, measured like a steering trial."""
    from interventions.prompting import kshot_logits

    run, shots = ctx.family, ctx.options["baseline"]["shots"]
    logits = run.memo(("kshot", shots), lambda: kshot_logits(run, shots))
    out = steering_metrics(run.clean_logits, logits, run.target, run.distractor)
    clean, steered = _shift(run, logits)
    out.update(shift_metrics(steered - clean, 1.0, ctx.seed, run.split.family))
    return TrialResult(out, items={"ld_clean": clean.tolist(), "ld_steered": steered.tolist()})


@kind("steering", axes=SteeringAxes, metrics=METRICS, primary="ld_delta", shown=("kl", "accuracy_clean", "selectivity"),
      pack_axes=("strength", "vector_type"), uses_other_families=True, points=steering_points,
      options={"baseline": Baseline, "generate": Generate}, control={"vector_type": "random"},
      split_warnings=pair_warnings, restarts_at_layer=True)
def steering_trials(ctx: TrialContext, points: list[dict]) -> list[TrialResult]:
    """Grid points of one layer (set) (any strengths and vector types): steer the eval items at resid_post[layer];
    metrics against the clean run. A knock-out (strength < 0) also steers the other families (collateral)."""
    if points[0]["vector_type"] == PROMPT:
        return [prompt_baseline(ctx) for _ in points]
    run, layers = ctx.family, layer_set(points[0]["layer"])
    norms = {layer: run.resid_norm(layer) for layer in layers}
    units = [{layer: steering_vector(ctx, layer, p["vector_type"]) for layer in layers} for p in points]
    deltas = [{layer: (p["strength"] * norms[layer]) * u[layer] for layer in layers} for p, u in zip(points, units)]
    steered = steered_logits(run.model, run.eval_batch, run.clean_resid, deltas, ctx.prefix_reuse)
    knock = [i for i, p in enumerate(points) if p["strength"] < 0] if ctx.others else []
    collateral = [dict(zip(knock, steered_logits(o.model, o.eval_batch, o.clean_resid, [deltas[i] for i in knock],
                                                 ctx.prefix_reuse)))
                  for o in ctx.others] if knock else []
    generated = _generated(ctx, deltas) if ctx.options.get("generate") else [({}, {})] * len(points)
    results, saved = [], set()
    for i, (p, logits) in enumerate(zip(points, steered)):
        out = steering_metrics(run.clean_logits, logits, run.target, run.distractor)
        clean, moved = _shift(run, logits)
        out.update(shift_metrics(moved - clean, p["strength"], ctx.seed, run.split.family))
        out.update(_geometry(ctx, layers, p["vector_type"]), depth=depth(layers, run.model.n_layers))
        if i in knock:  # how much of the drop is specific to this family
            own = mean(logprob_drop(run, logits))
            spill = mean(torch.cat([logprob_drop(o, c[i]) for o, c in zip(ctx.others, collateral)]))
            out.update(target_logprob_drop=own, collateral_logprob_drop=spill, selectivity=selectivity(own, spill))
        out.update(generated[i][0])
        tensors = {}
        if p["vector_type"] not in saved:  # a vector travels once per pack; the driver keeps one per name
            saved.add(p["vector_type"])
            for layer in layers:
                tensors[vector_name(run.split.family, ctx.seed, layer, p["vector_type"])] = units[i][layer]
                tensors[vector_name(run.split.family, ctx.seed, layer, "r_L")] = torch.tensor([norms[layer]])
        results.append(TrialResult(out, items={"ld_clean": clean.tolist(), "ld_steered": moved.tolist()},
                                   tensors=tensors, artifacts=generated[i][1]))
    return results


def _generated(ctx: TrialContext, deltas: list[dict[int, Tensor]]) -> list[tuple[dict[str, float], dict[str, bytes]]]:
    """Per point: generation metrics and its continuations.txt artifact (generation.py); neutral_kl from here."""
    from interventions.generation import generation_results, neutral_clean

    run = ctx.family
    batch, logits, resid = run.memo(("neutral",), lambda: neutral_clean(run.model))
    steered = steered_logits(run.model, batch, lambda layer: resid[layer], deltas, ctx.prefix_reuse)
    return generation_results(run, deltas, ctx.options["generate"]["tokens"], [mean(kl(logits, s)) for s in steered])
