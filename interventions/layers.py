"""Layer axes by depth: `all`, `{every: k}` and `{depth: [fractions]}` besides layer indices, resolved per model.

A layer axis (`layer`, `exit_layer`, steering's layer sets, skip sets) holds, besides integers:

- `all`: every layer, 0 .. n_layers - 1;
- `{every: k}`: layers 0, k, 2k, ... below n_layers;
- `{depth: [x, ...]}`: for each fraction x in [0, 1], the layer nearest x * n_layers (halves round down),
  clamped to 0 .. n_layers - 1; duplicates merged.

At the top level of an axis each such value becomes one axis value per layer (in order, duplicates merged, an
explicit index given twice still refused by the axis); inside a set (`[{depth: [0.25, 0.75]}, 3]`) its layers join
the one set. Resolution happens at spec validation against the spec's model, so trial_ids hold the layer indices:
`layer: all` on a 4-layer model runs the same grid points as `layer: [0, 1, 2, 3]`.
"""
from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainValidator

from interventions.kinds import axis

ALL = "all"
FORMS = "an integer or a list of integers, 'all', {every: k} or {depth: [fractions]}"


def is_symbolic(value) -> bool:
    return value == ALL or isinstance(value, dict)


def check_item(value, where: str = ""):
    """Pydantic-side check of one layer item (model-independent); returns it normalised. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{where}a layer is {FORMS}, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where}Input should be greater than or equal to 0")
        return value
    if value == ALL:
        return value
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "every":
            if isinstance(arg, bool) or not isinstance(arg, int) or arg < 1:
                raise ValueError(f"{where}every: {arg!r} must be an integer >= 1")
            return {"every": arg}
        if key == "depth":
            fractions = arg if isinstance(arg, list) else [arg]
            if not fractions:
                raise ValueError(f"{where}depth: needs at least one fraction")
            for x in fractions:
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1:
                    raise ValueError(f"{where}depth: {x!r} is not a fraction in [0, 1]")
            return {"depth": [float(x) for x in fractions]}
        raise ValueError(f"{where}unknown layer form {key!r}; a layer is {FORMS}")
    raise ValueError(f"{where}a layer is {FORMS}, not {value!r}")


def check_set(value: list, *, empty: bool = False) -> list:
    """A set of layer items: non-empty unless `empty`, no explicit index twice; all-integer sets kept sorted."""
    if not isinstance(value, list):
        raise ValueError(f"a layer set is a list of layers, not {value!r}")
    items = [check_item(x, f"layer set {value}: ") for x in value]
    if not items and not empty:
        raise ValueError("a layer set needs at least one layer")
    explicit = [x for x in items if not is_symbolic(x)]
    if len(set(explicit)) != len(explicit):
        raise ValueError(f"layer set {value} repeats a layer")
    return sorted(items) if len(explicit) == len(items) else items


def _one_layer(value):
    if isinstance(value, list):
        raise ValueError(f"a layer is {FORMS.replace(' or a list of integers', '')}, not a list")
    return check_item(value)


def _layer_or_set(value):
    return check_set(value) if isinstance(value, list) else check_item(value)


def _skip_set(value):
    """A skip value: a set of layers (may be empty), or a symbolic item meaning one single-layer set per layer."""
    if isinstance(value, list):
        return check_set(value, empty=True)
    if is_symbolic(value):
        return check_item(value)
    raise ValueError(f"a skip value is a list of layers, 'all', {{every: k}} or {{depth: [fractions]}}, not {value!r}")


def _listed(value):
    """`layer: all` or `layer: {depth: [...]}` as the one-item axis it stands for."""
    return [value] if isinstance(value, (str, dict)) else value


def layer_axis(check) -> Any:
    return Annotated[axis(Annotated[Any, PlainValidator(check)]), BeforeValidator(_listed)]


Layers = layer_axis(_one_layer)  # `layer`, `exit_layer`: indices or symbolic items
LayersOrSets = layer_axis(_layer_or_set)  # steering's `layer`: besides those, sets of layers steered at once
SkipSets = layer_axis(_skip_set)  # skip's `skip`: sets of layers skipped together


def at_depth(fraction: float, n_layers: int) -> int:
    """The layer nearest fraction x n_layers (halves round down), clamped to the model's layers."""
    return min(max(math.ceil(fraction * n_layers - 0.5), 0), n_layers - 1)


def expand(value, n_layers: int) -> list[int]:
    """One layer item as the layers it names on a model of `n_layers` layers (an index is returned as is)."""
    if value == ALL:
        return list(range(n_layers))
    if isinstance(value, dict) and "every" in value:
        return list(range(0, n_layers, value["every"]))
    if isinstance(value, dict):
        return list(dict.fromkeys(at_depth(x, n_layers) for x in value["depth"]))
    return [value]


def resolve_axis(values: list, n_layers: int, *, sets_only: bool = False) -> list:
    """An axis' values with every symbolic item resolved: at the top level, one value per layer; inside a set,
    its layers joined into the set (sorted). With `sets_only` (skip sets), a top-level item becomes the set of
    that one layer. Resolved duplicates are merged (the first kept)."""
    out: list = []
    for value in values:
        if isinstance(value, list):
            new = [sorted({layer for x in value for layer in expand(x, n_layers)})]
        else:
            new = [[x] if sets_only else x for x in expand(value, n_layers)]
        out += [v for v in new if v not in out]
    return out


def depth(layers: int | list[int], n_layers: int) -> float:
    """A grid point's depth: its layer / n_layers (a set of layers: their mean / n_layers)."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    return sum(layers) / len(layers) / n_layers
