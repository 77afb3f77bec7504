"""Layer skipping and early exit (logit lens): the `skip` and `early_exit` kinds, measured against the full model."""
from __future__ import annotations

from torch import Tensor

from interventions.context import FamilyRun, TrialContext
from interventions.forward import embed, run_from, unembed_last
from interventions.kinds import CommonAxes, kind
from interventions.layers import Layers, SkipSets, depth
from interventions.metrics import agreement_metrics
from interventions.registry import AtlasError

METRICS = ("kl", "top1_agreement", "top5_overlap", "accuracy_clean", "accuracy_intervened", "depth")


def skipped_logits(run: FamilyRun, skip: frozenset[int], prefix_reuse: bool = True) -> Tensor:
    """Eval logits with the blocks in `skip` passing the residual through; starts at the first skipped layer."""
    model = run.model
    if not skip:
        return run.clean_logits
    first = min(skip)
    start = embed(model, run.eval_batch) if first == 0 else run.clean_resid(first - 1)
    return run_from(model, start, run.eval_batch, first, skip=skip, prefix_reuse=prefix_reuse)


def exit_logits(run: FamilyRun, layer: int) -> Tensor:
    """Logit lens: unembed(final_norm(resid_post[layer])) at the last position."""
    return unembed_last(run.model, run.clean_resid(layer))


class SkipAxes(CommonAxes):
    skip: SkipSets  # each value is a set of layers skipped together ([] = none); `all` etc.: one set per layer


def skip_points(axes: dict, info) -> list[dict]:
    for i, layers in enumerate(axes["skip"]):
        for j, layer in enumerate(layers):
            if layer >= info.n_layers:
                raise AtlasError(f"axes.skip.{i}.{j}: layer {layer} is outside 0..{info.n_layers - 1} "
                                 f"({info.name} has {info.n_layers} layers)")
        if len(set(layers)) != len(layers):
            raise AtlasError(f"axes.skip.{i}: layer set {layers} repeats a layer")
    return [{"skip": sorted(layers)} for layers in axes["skip"]]


@kind("skip", axes=SkipAxes, metrics=METRICS, primary="kl", shown=("accuracy_clean",), layer_axes=(),
      set_axes=("skip",), points=skip_points)
def skip_trial(ctx: TrialContext, *, skip: list[int]) -> dict[str, float]:
    """One grid point: skip a set of layers; metrics against the full model."""
    run = ctx.family
    out = agreement_metrics(run.clean_logits, skipped_logits(run, frozenset(skip), ctx.prefix_reuse), run.target)
    return {**out, "depth": depth(skip, run.model.n_layers)} if skip else out


class EarlyExitAxes(CommonAxes):
    exit_layer: Layers


@kind("early_exit", axes=EarlyExitAxes, metrics=METRICS, primary="kl", shown=("accuracy_clean",),
      layer_axes=("exit_layer",))
def early_exit_trial(ctx: TrialContext, *, exit_layer: int) -> dict[str, float]:
    """One grid point: read the prediction off resid_post[exit_layer]; metrics against the full model."""
    run = ctx.family
    out = agreement_metrics(run.clean_logits, exit_logits(run, exit_layer), run.target)
    return {**out, "depth": depth(exit_layer, run.model.n_layers)}
