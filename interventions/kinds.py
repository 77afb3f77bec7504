"""Experiment kinds: the KINDS registry, the axes every kind shares, and the `@kind` decorator."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import product
from typing import Annotated, Callable, ClassVar, Iterable

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from torch import Tensor

from interventions.context import TrialContext
from interventions.families import FAMILIES, Split, is_jsonl
from interventions.length import bucket_label
from interventions.models import ModelInfo
from interventions.registry import Registry


@dataclass
class TrialResult:
    """What a trial function may return instead of a bare {metric: value} dict."""

    metrics: dict[str, float]
    steps: dict[str, list[float]] = field(default_factory=dict)  # metric -> value at step 0, 1, ... (curves)
    tags: dict[str, str] = field(default_factory=dict)  # logged as orchestrator.<name> tags
    artifacts: dict[str, bytes] = field(default_factory=dict)  # file name -> content, logged on the child run
    items: dict[str, list[float]] = field(default_factory=dict)  # column -> one value per eval item (items.parquet)
    tensors: dict[str, Tensor] = field(default_factory=dict)  # name -> tensor, saved once per sweep (safetensors)

    def extra(self) -> dict:
        """Everything but the metrics, as the worker sends it to the driver (tensors as safetensors bytes)."""
        from safetensors.torch import save

        tensors = save({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}) if self.tensors else b""
        return {"steps": self.steps, "tags": self.tags, "artifacts": self.artifacts, "items": self.items,
                "tensors": tensors}


TrialFn = Callable[..., "dict[str, float] | TrialResult"]  # fn(ctx, **kind_axes)
PackFn = Callable[[TrialContext, list[dict]], "list[dict[str, float] | TrialResult]"]  # fn(ctx, points)
PointsFn = Callable[..., Iterable[dict]]  # (axes, info), or (axes, info, options) for a kind with `options`
SplitsCheck = Callable[[dict[str, list], dict], None]  # (axes, {(family, seed): Split}) -> raise AtlasError
SplitFn = Callable[..., Split]  # (value, seed, tokenizer, n_train, n_eval, base_dir) -> Split
SplitWarnings = Callable[[dict, object], Iterable[str]]  # ({(family, seed): Split}, tokenizer) -> warning lines


def registered(registry: Registry) -> AfterValidator:
    """Pydantic validator: the value must name an entry of `registry`."""

    def check(name: str) -> str:
        registry.get(name)
        return name

    return AfterValidator(check)


def _family_value(value: str) -> str:
    if not is_jsonl(value):
        FAMILIES.get(value)  # unknown name -> error listing the known ones
    return value


def _distinct(values: list) -> list:
    seen = set()
    for v in values:
        key = json.dumps(v, sort_keys=True)  # list values (skip sets) compare by content
        if key in seen:
            raise ValueError(f"duplicate value {v!r}")
        seen.add(key)
    return values


def axis(item_type) -> type:
    """A non-empty list of distinct values, each of `item_type`."""
    return Annotated[list[item_type], Field(min_length=1), AfterValidator(_distinct)]


class CommonAxes(BaseModel):
    """Axes of every kind: `family` values are built-in names or `*.jsonl` paths relative to the spec; the optional
    `length` buckets (interventions/length.py) lengthen every family's items (absent: the items as they are)."""

    model_config = ConfigDict(extra="forbid")
    seed: axis(Annotated[int, Field(ge=0)])
    family: axis(Annotated[str, AfterValidator(_family_value)])
    length: axis(Annotated[str, BeforeValidator(bucket_label)]) | None = None


class Option(BaseModel):
    """A spec section besides axes that a kind reads (`Kind.options`, name -> its model): the trial gets
    ctx.options[name], the section with its defaults filled in (None when off); a kind that does not read it refuses
    it."""

    model_config = ConfigDict(extra="forbid")
    every_point: ClassVar[bool] = False  # every grid point's numbers depend on it: part of every trial_id when on
    on_by_default: ClassVar[bool] = False  # absent from the spec: on with its defaults (else off)

    def check(self, spec) -> None:
        """Checks against the rest of the validated spec (orchestrator.spec.SweepSpec): raise
        AtlasError("<field>: <reason>")."""


@dataclass(frozen=True, kw_only=True)
class Kind:
    """An experiment kind: its trial function and everything the rest of the tree reads about it.

    The report side (orchestrator/report/sections) adds a kind's figures and summary under the same name.
    """

    name: str
    fn: TrialFn | PackFn  # fn(ctx, **kind_axes) -> {metric: value}; with pack_axes, fn(ctx, points) -> [...]
    axes: type[CommonAxes]
    metrics: tuple[str, ...]  # every metric the trial function may return
    primary: str  # the metric tables are sorted by (largest |mean| first)
    shown: tuple[str, ...] = ()  # besides `primary`, the metrics the end-of-sweep table prints (when logged)
    curves: tuple[str, ...] = ()  # step-indexed metrics (fnmatch patterns): a value per step, e.g. per layer
    layer_axes: tuple[str, ...] = ("layer",)  # axes whose values must be layer indices of the model
    set_axes: tuple[str, ...] = ()  # axes whose values are sets of layers (skip); their layers are checked likewise
    pack_axes: tuple[str, ...] = ()  # axes along which grid points can share one batched forward
    uses_other_families: bool = False  # the trial reads the sweep's other families (collateral)
    points: PointsFn | None = None  # the kind-axis combinations when not the full product (see kind_points)
    check_splits: SplitsCheck | None = None  # item-dependent checks (patching needs corrupt prompts)
    options: dict[str, type[Option]] = field(default_factory=dict)  # spec sections besides axes the kind reads
    # (section name -> its model; ctx.options and `points`' third argument hold them validated)
    split_warnings: SplitWarnings | None = None  # printed before the sweep, never fatal (steering: cancelling pairs)
    restarts_at_layer: bool = False  # with prefix reuse a trial's forward starts at its `layer` (cost.py): at L for
    # a component that reads its layer's input (components.FROM_INPUT), else at L + 1 (after resid_post[L])
    baseline_copies: int = 1  # clean-residual-sized tensors its cached baselines hold per (family, seed) (cost.py)
    control: dict | None = None  # the point each table row is compared with: its axis values with these replaced
    split: SplitFn | None = None  # how a `family` value becomes its items, when not a task family (families.make_split)
    float_linears: bool = False  # puts LoRA layers (peft) on the model's linears: no quantised precision (int8, nf4)


# The modules here that declare kinds (imported on the first lookup, so KINDS is complete whoever reads it); a
# package above adds its own with KINDS.add_sources (adapters/__init__.py).
KINDS: Registry[Kind] = Registry("experiment kind", sources=(
    "interventions.steering", "interventions.ablation", "interventions.skipping", "interventions.generation_check"))


def kind(name: str, **declaration) -> Callable[[TrialFn], TrialFn]:
    """Register a trial function as experiment kind `name`; `declaration` holds the other Kind fields by keyword.

    With `pack_axes`, the function takes a pack: (ctx, points), the points differing only along
    those axes, and returns one result per point (computed in batched forwards).
    """

    def add(fn: TrialFn) -> TrialFn:
        KINDS.register(name)(Kind(name=name, fn=fn, **declaration))
        return fn

    return add


def kind_axes(k: Kind) -> list[str]:
    """The axes a kind's function takes as keywords (every axis but seed and family)."""
    return [a for a in k.axes.model_fields if a not in CommonAxes.model_fields]


def kind_points(k: Kind, axes: dict[str, list], info: ModelInfo, options: dict | None = None) -> list[dict]:
    """Every combination of the kind's own axes for this model.

    The full product unless the kind says otherwise: an axis that only some values of another
    axis use (ablation's `head` only with `component: head`) is left out of the other points.
    A kind's `points` may raise AtlasError("axes.<field>: <reason>") for model-dependent checks;
    a kind with `options` also gets them (steering adds its prompting baseline's points).
    """
    if k.points is not None:
        return list(k.points(axes, info, options or {}) if k.options else k.points(axes, info))
    names = kind_axes(k)
    return [dict(zip(names, combo)) for combo in product(*(axes[n] for n in names))]


def run_pack(name: str, ctx: TrialContext, points: list[dict]) -> list[TrialResult]:
    """Results of grid points that share (seed, family) and differ only along the kind's pack axes."""
    k = KINDS.get(name)
    own = [{a: p[a] for a in kind_axes(k) if a in p} for p in points]
    if k.pack_axes:
        shared = [{a: v for a, v in p.items() if a not in k.pack_axes} for p in own]
        assert all(s == shared[0] for s in shared), f"a pack may vary only {k.pack_axes}"
        outs = k.fn(ctx, own)
    else:
        outs = [k.fn(ctx, **p) for p in own]
    return [out if isinstance(out, TrialResult) else TrialResult(out) for out in outs]


def run_kind(name: str, ctx: TrialContext, point: dict) -> TrialResult:
    return run_pack(name, ctx, [point])[0]


__all__ = ["KINDS", "Kind", "CommonAxes", "Option", "TrialContext", "axis", "TrialResult", "kind", "kind_axes",
           "kind_points", "registered", "run_kind", "run_pack"]
