"""Steering: the VECTORS registry (mean_diff, pca, probe, random), `steer`, and the steering kind.

A unit vector v is built at resid_post[L] from the family's train items; the trial adds
`strength * r_L * v` to resid_post[L] at every prompt position of the eval items and
runs the remaining layers from the cached clean residual.
"""
from __future__ import annotations

from typing import Annotated, Callable

import torch
from pydantic import Field, FiniteFloat
from torch import Tensor

from interventions.context import TrainActs, TrialContext, seeded_generator
from interventions.forward import run_from
from interventions.kinds import CommonAxes, axis, kind, registered
from interventions.metrics import mean, selectivity, steering_metrics, target_logprob
from interventions.registry import Registry

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


def steering_vector(ctx: TrialContext, layer: int, vector_type: str) -> Tensor:
    """The unit vector for (family, seed, layer, vector_type), built once per actor."""
    build = VECTORS.get(vector_type)
    return ctx.family.memo(
        ("vector", layer, vector_type),
        lambda: build(ctx.family.train_acts(layer), seeded_generator(ctx.seed, layer)),
    )


def steered_logits(run, layer: int, steers: list[tuple[Tensor, float]], resid_norm: float,
                   prefix_reuse: bool = True) -> list[Tensor]:
    """Last-position logits of `run`'s eval items with each (direction, strength) added at resid_post[layer],
    all in one batched forward."""
    batch, clean = run.eval_batch, run.clean_resid(layer)
    resid = torch.cat([steer(clean, direction, strength, resid_norm, batch.mask) for direction, strength in steers])
    logits = run_from(run.model, resid, batch.repeat(len(steers)), layer + 1, prefix_reuse=prefix_reuse)
    return list(logits.split(len(clean)))


class SteeringAxes(CommonAxes):
    layer: axis(Annotated[int, Field(ge=0)])
    strength: axis(FiniteFloat)  # in units of r_L
    vector_type: axis(Annotated[str, registered(VECTORS)])


def logprob_drop(run, steered: Tensor) -> Tensor:
    """Per item: clean target log-prob minus steered target log-prob."""
    return target_logprob(run.clean_logits, run.target) - target_logprob(steered, run.target)


METRICS = ("ld_delta", "target_prob_clean", "target_prob_steered", "kl", "accuracy_clean", "accuracy_steered",
           "selectivity", "target_logprob_drop", "collateral_logprob_drop")


@kind("steering", axes=SteeringAxes, metrics=METRICS, primary="ld_delta", shown=("kl", "accuracy_clean", "selectivity"),
      pack_axes=("strength", "vector_type"), uses_other_families=True)
def steering_trials(ctx: TrialContext, points: list[dict]) -> list[dict[str, float]]:
    """Grid points of one layer (any strengths and vector types): steer the eval items at resid_post[layer];
    metrics against the clean run. A knock-out (strength < 0) also steers the other families (collateral)."""
    layer, run = points[0]["layer"], ctx.family
    r_l = run.resid_norm(layer)
    steers = [(steering_vector(ctx, layer, p["vector_type"]), p["strength"]) for p in points]
    steered = steered_logits(run, layer, steers, r_l, ctx.prefix_reuse)
    knock = [i for i, p in enumerate(points) if p["strength"] < 0] if ctx.others else []
    collateral = [dict(zip(knock, steered_logits(o, layer, [steers[i] for i in knock], r_l, ctx.prefix_reuse)))
                  for o in ctx.others
                  ] if knock else []
    results = []
    for i, logits in enumerate(steered):
        out = steering_metrics(run.clean_logits, logits, run.target, run.distractor)
        if i in knock:  # how much of the drop is specific to this family
            own = mean(logprob_drop(run, logits))
            spill = mean(torch.cat([logprob_drop(o, c[i]) for o, c in zip(ctx.others, collateral)]))
            out.update(target_logprob_drop=own, collateral_logprob_drop=spill, selectivity=selectivity(own, spill))
        results.append(out)
    return results
