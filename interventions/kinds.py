"""Experiment kinds: the KINDS registry, the axes every kind shares, and the `@kind` decorator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from interventions.context import TrialContext
from interventions.families import FAMILIES, is_jsonl
from interventions.registry import Registry

TrialFn = Callable[..., dict[str, float]]


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
        if v in seen:
            raise ValueError(f"duplicate value {v!r}")
        seen.add(v)
    return values


def axis(item_type) -> type:
    """A non-empty list of distinct values, each of `item_type`."""
    return Annotated[list[item_type], Field(min_length=1), AfterValidator(_distinct)]


class CommonAxes(BaseModel):
    """Axes of every kind: `family` values are built-in names or `*.jsonl` paths relative to the spec."""

    model_config = ConfigDict(extra="forbid")
    seed: axis(Annotated[int, Field(ge=0)])
    family: axis(Annotated[str, AfterValidator(_family_value)])


@dataclass(frozen=True)
class Kind:
    name: str
    fn: TrialFn  # fn(ctx: TrialContext, **kind_axes) -> {metric: value}
    axes: type[CommonAxes]
    primary: str  # the metric tables are sorted by (largest |mean| first)
    metrics: tuple[str, ...]  # every metric the trial function may return
    layer_axes: tuple[str, ...]  # axes whose values must be layer indices of the model
    uses_other_families: bool = False  # the trial reads the sweep's other families (collateral)


KINDS: Registry[Kind] = Registry("experiment kind")


def kind(name: str, *, axes: type[CommonAxes], primary: str, metrics: tuple[str, ...],
         layer_axes: tuple[str, ...] = ("layer",), uses_other_families: bool = False) -> Callable[[TrialFn], TrialFn]:
    """Register a trial function as experiment kind `name` with its axes model and metric names."""

    def add(fn: TrialFn) -> TrialFn:
        KINDS.register(name)(Kind(name, fn, axes, primary, metrics, layer_axes, uses_other_families))
        return fn

    return add


def kind_axes(k: Kind) -> list[str]:
    """The axes a kind's function takes as keywords (every axis but seed and family)."""
    return [a for a in k.axes.model_fields if a not in CommonAxes.model_fields]


def run_kind(name: str, ctx: TrialContext, point: dict) -> dict[str, float]:
    k = KINDS.get(name)
    return k.fn(ctx, **{a: point[a] for a in kind_axes(k)})


__all__ = ["KINDS", "Kind", "CommonAxes", "TrialContext", "axis", "kind", "kind_axes", "registered", "run_kind"]
