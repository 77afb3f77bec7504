"""The cross_model_patch kind (DESIGN §6): the LoRA-trained model's resid_post[L] patched into the base model's run.

The trained model is a copy of the actor's model with the adapter merged into its weights
(peft merge_and_unload); its eval run (logits and every layer's residual) is computed once
per adapter and the copy dropped. recovery = (LD_patched - LD_base) / (LD_trained - LD_base).
"""
from __future__ import annotations

from adapters.kind import TRAIN_LOSS
from adapters.lora import Adapter, merged_copy, trim_heap
from adapters.runs import Adapted
from adapters.sources import TRAIN, SourceAxes, adapter_for, recent, sources, spread
from interventions.context import TrialContext
from interventions.forward import clean_run
from interventions.kinds import TrialResult, kind
from interventions.layers import Layers, depth
from interventions.metrics import kl, logit_diff, mean, top1_correct
from interventions.patching import patched_logits, recovery


def trained_run(ctx: TrialContext, adapter: Adapter) -> Adapted:
    """The eval items through the merged (base + adapter) copy of the model."""

    def compute() -> Adapted:
        trained = merged_copy(ctx.model, adapter)
        run = Adapted(*clean_run(trained, ctx.family.eval_batch))
        del trained
        trim_heap()
        return run

    return recent("merged", (ctx.model.name, ctx.family.split.digest(), adapter.key), compute)


class CrossModelAxes(SourceAxes):
    layer: Layers  # indices, `all`, {every: k}, {depth: [...]} (interventions/layers.py)


def cross_model_points(axes: dict, info) -> list[dict]:
    return spread([[{**source, "layer": layer} for layer in axes["layer"]] for source in sources(axes, info)])


METRICS = ("recovery", "kl", "ld_gap", "accuracy_clean", "accuracy_trained", "accuracy_patched", "train_loss_last",
           "depth")


@kind("cross_model_patch", axes=CrossModelAxes, metrics=METRICS, primary="recovery", shown=("kl", "accuracy_clean"),
      curves=(TRAIN_LOSS,), points=cross_model_points, float_linears=True)
def cross_model_trial(ctx: TrialContext, *, layer: int, adapter: str = TRAIN, rank: int | None = None,
                      alpha: float | None = None, steps: int | None = None, lr: float | None = None,
                      targets: str | None = None) -> TrialResult:
    """One grid point: the trained model's resid_post[layer] through the base model's later layers."""
    found, how = adapter_for(ctx, adapter, rank, alpha, steps, lr, targets)
    run, donor = ctx.family, trained_run(ctx, found)
    patched = patched_logits(ctx.model, donor.resid[layer], run.eval_batch, layer)
    ld_base, ld_trained, ld_patched = (mean(logit_diff(x, run.target, run.distractor))
                                       for x in (run.clean_logits, donor.logits, patched))
    metrics = {"recovery": recovery(ld_patched, ld_base, ld_trained), "kl": mean(kl(donor.logits, patched)),
               "ld_gap": ld_trained - ld_base, "accuracy_clean": mean(top1_correct(run.clean_logits, run.target)),
               "accuracy_trained": mean(top1_correct(donor.logits, run.target)),
               "accuracy_patched": mean(top1_correct(patched, run.target)), "depth": depth(layer, ctx.model.n_layers)}
    result = TrialResult(metrics, tags={"adapter": found.key, "adapter_source": how})
    if layer == ctx.model.n_layers - 1:  # one run per adapter carries the adapter and its loss curve
        result.artifacts.update(found.files())
        if found.loss:
            result.steps[TRAIN_LOSS] = list(found.loss)
            result.metrics["train_loss_last"] = found.loss[-1]
    return result
