"""Runs of a family's eval items with an adapter: adapted, with some layers' LoRA switched off, on another model.

Heavy results (every layer's residual of an adapted run) are kept for the two most recent
adapters of the actor; per-layer ablation effects are kept with the family's baselines.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from adapters.lora import Adapter, attached, disabled
from adapters.sources import recent
from adapters.surgery import layer_of
from interventions.context import FamilyRun, TrialContext
from interventions.families import misfit
from interventions.forward import clean_run, run_from
from interventions.metrics import kl, mean
from interventions.models import Model, load


@dataclass(frozen=True)
class Adapted:
    logits: Tensor  # (n_eval, vocab), last position
    resid: dict[int, Tensor]  # resid_post[L]: (n_eval, pos, d_model)


def adapted(ctx: TrialContext, adapter: Adapter, keep: bool = True) -> Adapted:
    """The eval items through the model with the adapter on."""

    def compute() -> Adapted:
        with attached(ctx.model, adapter):
            return Adapted(*clean_run(ctx.model, ctx.family.eval_batch))

    if not keep:
        return compute()
    return recent("adapted", (ctx.model.name, ctx.family.split.digest(), adapter.key), compute)


def _paths(ctx: TrialContext, adapter: Adapter, layers: set[int]) -> set[str]:
    return {p for p in adapter.pairs() if layer_of(p, ctx.model.arch.layers) in layers}


def _from_layer(ctx: TrialContext, full: Adapted, start: int) -> Tensor:
    """Logits of the (attached, partly switched off) model, reusing the adapted run before layer `start`."""
    batch = ctx.family.eval_batch
    if start == 0:
        return clean_run(ctx.model, batch)[0]
    return run_from(ctx.model, full.resid[start - 1], batch, start, prefix_reuse=ctx.prefix_reuse)


def layers_ablated(ctx: TrialContext, adapter: Adapter, layers: set[int]) -> Tensor:
    """Logits (n_eval, vocab) with the adapter on everywhere but in `layers`."""
    full = adapted(ctx, adapter)
    with attached(ctx.model, adapter) as peft_model, disabled(peft_model, _paths(ctx, adapter, layers)):
        return _from_layer(ctx, full, min(layers))


def layer_effects(ctx: TrialContext, adapter: Adapter) -> list[float]:
    """Per layer: KL(P_adapted || P_adapter off in that layer only); 0 where the adapter has no module."""

    def compute() -> list[float]:
        full, effects = adapted(ctx, adapter), []
        with attached(ctx.model, adapter) as peft_model:
            for layer in range(ctx.model.n_layers):
                paths = _paths(ctx, adapter, {layer})
                if not paths:
                    effects.append(0.0)
                    continue
                with disabled(peft_model, paths):
                    effects.append(mean(kl(full.logits, _from_layer(ctx, full, layer))))
        return effects

    return ctx.family.memo(("adapter effects", adapter.key), compute)


def target_model(ctx: TrialContext, name: str) -> Model:
    """The actor's model itself, or another model loaded once (the two most recent are kept)."""
    if name == ctx.model.name:
        return ctx.model
    return recent("model", (name, str(ctx.model.device)), lambda: load(name, device=str(ctx.model.device)))


def items_problem(ctx: TrialContext, target: Model) -> str | None:
    """Why the family's eval items cannot be scored on `target` (its tokenizer), or None."""
    for item in ctx.family.split.eval:
        problem = misfit(item, target.tokenizer)
        if problem:
            return f"items: {problem} for {target.name}'s tokenizer"
    return None


def target_family(ctx: TrialContext, target: Model) -> FamilyRun:
    if target is ctx.model:
        return ctx.family
    return recent("family", (target.name, ctx.family.split.digest()), lambda: FamilyRun(target, ctx.family.split))


def on_target(ctx: TrialContext, adapter: Adapter, target: Model) -> tuple[Tensor, Tensor]:
    """Last-position logits of the eval items on `target` without and with the adapter."""
    run = target_family(ctx, target)
    with attached(target, adapter):
        with_adapter = clean_run(target, run.eval_batch)[0]
    return run.clean_logits, with_adapter
