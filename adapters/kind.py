"""The adapter kind: ADAPTER_OPS (train, norm_profile, layer_ablation, rank_truncation, norm_effect, compat).

Every trial gets its adapter (trained once per settings, see `sources.py`), runs one
operation on the family's eval items, and reports `accuracy_clean` (base model),
`accuracy_adapted` and `kl_adapter` (KL(base || base + adapter)) besides the operation's own
metrics. The actor's model carries the adapter only inside `attached(...)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable, ClassVar

import pandas as pd
from pydantic import Field
from torch import Tensor

from adapters import runs
from adapters.lora import Adapter, attached, layer_norms
from adapters.sources import TRAIN, SourceAxes, adapter_for, checkpoints_for, source_rank, sources, spread
from adapters.surgery import compat_problem, norm_table, parquet, per_layer, truncated
from interventions.context import TrialContext
from interventions.kinds import Option, TrialResult, axis, kind, registered
from interventions.lockin import lock_in_steps
from interventions.metrics import kl, logit_diff, mean, pearson, spearman, top1_correct
from interventions.models import describe
from interventions.registry import AtlasError, Registry


@dataclass
class OpInput:
    """What an operation gets: the trial context, the adapter, and its own axis value (if it has one)."""

    ctx: TrialContext
    adapter: Adapter
    value: int | str | None = None
    source: dict = field(default_factory=dict)  # the training axis values of a trained adapter (lock_in retrains)


OpFn = Callable[[OpInput], TrialResult]
ADAPTER_OPS: Registry[OpFn] = Registry("adapter operation")
NORM_LAYER, EFFECT_LAYER, TRAIN_LOSS = "norm_layer", "effect_layer", "train_loss"  # step-indexed metrics
LOCK_EFFECT, LOCK_IN_LAYER = "lock_effect_step", "lock_in_layer"  # lock_in: per-layer KL at a checkpoint; lock-in step
OP_AXES = {"layer_ablation": "layer", "rank_truncation": "keep_rank", "compat": "target_model"}
OP_AXIS_HELP = {"layer": "layer indices", "keep_rank": "ranks to keep, 0..rank", "target_model": "model names"}


def against_adapter(ctx: TrialContext, adapted: Tensor, other: Tensor) -> dict[str, float]:
    """kl = KL(P_adapted || P_other), ld_drop = LD adapted - LD other, accuracy of `other`; logits (n_eval, vocab)."""
    run = ctx.family
    ld_drop = logit_diff(adapted, run.target, run.distractor) - logit_diff(other, run.target, run.distractor)
    return {"kl": mean(kl(adapted, other)), "ld_drop": mean(ld_drop), "accuracy": mean(top1_correct(other, run.target))}


def norms(ctx: TrialContext, adapter: Adapter) -> pd.DataFrame:
    """Rows (layer, module, norm = ||B A||_F x scaling) read from the attached peft layers."""
    with attached(ctx.model, adapter) as peft_model:
        return norm_table(layer_norms(peft_model), ctx.model.arch.layers)


@ADAPTER_OPS.register("train")
def train_op(op: OpInput) -> TrialResult:
    """The loss curve (step-indexed), first and last loss, and the adapter as a peft folder artifact."""
    loss = list(op.adapter.loss)
    metrics = {"train_loss_first": loss[0], "train_loss_last": loss[-1]} if loss else {}
    return TrialResult(metrics, steps={TRAIN_LOSS: loss} if loss else {}, artifacts=op.adapter.files())


@ADAPTER_OPS.register("norm_profile")
def norm_profile_op(op: OpInput) -> TrialResult:
    """||B A||_F x scaling per layer and module; where the mass is as depth fractions."""
    model, table = op.ctx.model, norms(op.ctx, op.adapter)
    layers = per_layer(table, model.n_layers)
    squares = [n * n for n in layers]
    total = sum(squares)
    metrics = {"norm_total": total ** 0.5,
               "norm_peak_depth": max(range(model.n_layers), key=lambda i: layers[i]) / model.n_layers,
               "norm_centroid_depth": sum(i * s for i, s in enumerate(squares)) / total / model.n_layers
               if total > 0 else float("nan")}
    steps = {NORM_LAYER: layers}
    for module, rows in table.groupby("module"):
        steps[f"norm_{module}"] = per_layer(rows, model.n_layers)
    return TrialResult(metrics, steps=steps, artifacts={"norm_profile.parquet": parquet(table)})


@ADAPTER_OPS.register("layer_ablation")
def layer_ablation_op(op: OpInput) -> TrialResult:
    """The adapter switched off in one layer: KL and LD drop against the full adapter."""
    ablated = runs.layers_ablated(op.ctx, op.adapter, {op.value})
    return TrialResult(against_adapter(op.ctx, runs.adapted(op.ctx, op.adapter).logits, ablated))


@ADAPTER_OPS.register("rank_truncation")
def rank_truncation_op(op: OpInput) -> TrialResult:
    """Every B A cut to its best rank-keep_rank approximation: KL and LD drop against the full adapter."""
    cut = runs.adapted(op.ctx, truncated(op.adapter, op.value), keep=False).logits
    return TrialResult(against_adapter(op.ctx, runs.adapted(op.ctx, op.adapter).logits, cut))


@ADAPTER_OPS.register("norm_effect")
def norm_effect_op(op: OpInput) -> TrialResult:
    """Pearson and Spearman between per-layer norm and per-layer ablation effect (KL vs the full adapter)."""
    layers = per_layer(norms(op.ctx, op.adapter), op.ctx.model.n_layers)
    effects = runs.layer_effects(op.ctx, op.adapter)
    rows = [{"layer": i, "norm": n, "effect": e} for i, (n, e) in enumerate(zip(layers, effects))]
    return TrialResult({"pearson": pearson(layers, effects), "spearman": spearman(layers, effects)},
                       steps={NORM_LAYER: layers, EFFECT_LAYER: effects},
                       artifacts={"norm_effect.parquet": parquet(pd.DataFrame(rows))})


@ADAPTER_OPS.register("compat")
def compat_op(op: OpInput) -> TrialResult:
    """The adapter on another model: metrics when architecture and shapes fit, else compatible = 0 and the reason."""
    target = runs.target_model(op.ctx, op.value)
    problem = compat_problem(op.adapter, op.ctx.model.config.model_type, target) or runs.items_problem(op.ctx, target)
    if problem:
        return TrialResult({"compatible": 0.0}, tags={"compat_reason": problem})
    base, adapted = runs.on_target(op.ctx, op.adapter, target)
    target_run = runs.target_family(op.ctx, target)
    return TrialResult({"compatible": 1.0, "kl": mean(kl(base, adapted)),
                        "accuracy": mean(top1_correct(adapted, target_run.target)),
                        "accuracy_target": mean(top1_correct(base, target_run.target))},
                       tags={"compat_reason": "fits"})


@ADAPTER_OPS.register("lock_in")
def lock_in_op(op: OpInput) -> TrialResult:
    """The surgery profile (KL of dropping one layer's LoRA, against the full adapter at the same checkpoint) at every
    checkpoint of `checkpoints: {every: k}`; each layer's lock-in step (interventions/lockin.py)."""
    every = (op.ctx.options.get("checkpoints") or {}).get("every")
    if not every or op.source.get("adapter", TRAIN) != TRAIN:
        raise AtlasError("checkpoints: operation lock_in needs a checkpoints section and adapter: train")
    saved = checkpoints_for(op.ctx, every, **{k: v for k, v in op.source.items() if k != "adapter"})
    profiles = {step: dict(enumerate(runs.layer_effects(op.ctx, adapter))) for step, adapter in saved}
    locked = lock_in_steps(profiles)
    final = profiles[saved[-1][0]]
    top = sorted(final, key=lambda layer: (-final[layer], layer))[:3]
    n = op.ctx.model.n_layers
    steps = {f"{LOCK_EFFECT}{step}": [profile[layer] for layer in range(n)] for step, profile in profiles.items()}
    steps[LOCK_IN_LAYER] = [float(locked[layer]) for layer in range(n)]
    last = saved[-1][0]
    return TrialResult({"lock_in_top3": float(max(locked[layer] for layer in top)),
                        "lock_in_top3_fraction": max(locked[layer] for layer in top) / last,
                        "lock_in_median": float(sorted(locked.values())[len(locked) // 2]),
                        "checkpoints": float(len(saved))},
                       steps=steps, tags={"lock_in_top3_layers": ",".join(f"L{layer}" for layer in top)})


class Checkpoints(Option):
    """`checkpoints: {every: k}`: the adapter's LoRA state every k training steps (and the last), for lock_in."""

    every: int = Field(ge=1)
    every_point: ClassVar[bool] = True

    def check(self, spec) -> None:
        steps = spec.axes.get("steps") or [20]
        if self.every > min(steps):
            raise AtlasError(f"every: {self.every} > steps {min(steps)} (the fewest training steps of the sweep): "
                             "no checkpoint before the last")


class AdapterAxes(SourceAxes):
    operation: axis(Annotated[str, registered(ADAPTER_OPS)])
    layer: axis(Annotated[int, Field(ge=0)]) = []  # layer_ablation only
    keep_rank: axis(Annotated[int, Field(ge=0)]) = []  # rank_truncation only; values above an adapter's rank skip it
    target_model: axis(Annotated[str, Field(min_length=1)]) = []  # compat only: built-in name, hub id or folder


def _check_op_axes(axes: dict) -> None:
    for op, name in OP_AXES.items():
        if op in axes["operation"] and not axes[name]:
            raise AtlasError(f"axes.{name}: operation {op} needs a {name} axis ({OP_AXIS_HELP[name]})")
        if axes[name] and op not in axes["operation"]:
            raise AtlasError(f"axes.{name}: only used by operation {op}, which is not in axes.operation")


def adapter_points(axes: dict, info, options: dict) -> list[dict]:
    """Per adapter: each operation once, or once per value of its own axis; keep_rank up to the adapter's rank."""
    _check_op_axes(axes)
    if "lock_in" in axes["operation"]:
        if not options.get("checkpoints"):
            raise AtlasError("axes.operation: lock_in needs a checkpoints section (checkpoints: {every: k})")
        if any(a != TRAIN for a in axes["adapter"]):
            raise AtlasError("axes.operation: lock_in trains its adapter (adapter: train), a brought folder has no "
                             "checkpoints")
    found = sources(axes, info)
    ranks = [source_rank(s) for s in found]
    for i, keep in enumerate(axes["keep_rank"]):
        if keep > max(ranks):
            raise AtlasError(f"axes.keep_rank.{i}: keep_rank {keep} > rank {max(ranks)} (the largest adapter rank "
                             "of this sweep)")
    for i, name in enumerate(axes["target_model"]):
        try:
            describe(name)
        except AtlasError as exc:
            raise AtlasError(f"axes.target_model.{i}: {exc}") from None
    per_source = []
    for source, rank in zip(found, ranks):
        points = []
        for op in axes["operation"]:
            name = OP_AXES.get(op)
            values = [None] if name is None else [v for v in axes[name] if not (name == "keep_rank" and v > rank)]
            points += [{"operation": op, **source, **({} if v is None else {name: v})} for v in values]
        per_source.append(points)
    return spread(per_source)


CURVES = (NORM_LAYER, EFFECT_LAYER, TRAIN_LOSS, "norm_*_proj", f"{LOCK_EFFECT}*", LOCK_IN_LAYER)  # step = layer
# (train_loss: step = training step)
METRICS = ("kl", "ld_drop", "accuracy", "accuracy_clean", "accuracy_adapted", "kl_adapter", "train_loss_first",
           "train_loss_last", "norm_total", "norm_peak_depth", "norm_centroid_depth", "pearson", "spearman",
           "compatible", "accuracy_target", "lock_in_top3", "lock_in_top3_fraction", "lock_in_median",
           "checkpoints")


@kind("adapter", axes=AdapterAxes, metrics=METRICS, primary="kl", shown=("accuracy_clean",), curves=CURVES,
      points=adapter_points, options={"checkpoints": Checkpoints}, float_linears=True)
def adapter_trial(ctx: TrialContext, *, operation: str, adapter: str = TRAIN, rank: int | None = None,
                  alpha: float | None = None, steps: int | None = None, lr: float | None = None,
                  targets: str | None = None, layer: int | None = None, keep_rank: int | None = None,
                  target_model: str | None = None) -> TrialResult:
    """One grid point: get the adapter, run one operation, add the adapter's own effect."""
    found, how = adapter_for(ctx, adapter, rank, alpha, steps, lr, targets)
    value = {"layer": layer, "keep_rank": keep_rank, "target_model": target_model}.get(OP_AXES.get(operation))
    source = {"adapter": adapter, "rank": rank, "alpha": alpha, "steps": steps, "lr": lr, "targets": targets}
    result = ADAPTER_OPS.get(operation)(OpInput(ctx, found, value, source))
    run, adapted = ctx.family, runs.adapted(ctx, found).logits
    result.metrics.update(accuracy_clean=mean(top1_correct(run.clean_logits, run.target)),
                          accuracy_adapted=mean(top1_correct(adapted, run.target)),
                          kl_adapter=mean(kl(run.clean_logits, adapted)))
    result.tags.update(adapter=found.key, adapter_source=how)
    return result
