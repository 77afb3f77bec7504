"""Grid expansion: the product of a sweep's axes, in actor-friendly order, each point with a stable trial_id; packs."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from interventions.kinds import kind_axes, kind_points
from interventions.length import split_key
from orchestrator.spec import Part, Sweep


@dataclass(frozen=True)
class Point:
    trial_id: str
    values: dict  # axis -> value (family by name); an axis the point does not use is absent
    model: str  # the name of its sweep part's model (also in `values` when the sweep has a model axis)


def trial_id(sweep: Sweep, part: Part, values: dict, digests: dict[tuple[str, int], str]) -> str:
    """Hash of everything that changes a grid point's numbers, items included; the same on any machine."""
    length = values.get("length")  # a length axis: the items of the point's bucket (absent: ids as before)
    items = {f: digests[(split_key(f, length), values["seed"])] for f in part.axes["family"]}
    settings = {
        "model": part.name,
        "kind": sweep.kind.name,
        "point": {**values, "family": items[values["family"]]},
    }
    if sweep.spec.dtype != "float32":  # absent for float32: ids of sweeps from before the setting stay the same
        settings["dtype"] = sweep.spec.dtype
    if sweep.kind.uses_other_families:  # collateral metrics read the other families' items
        settings["families"] = sorted(items.values())
    if sweep.id_options:  # spec sections that change every point's numbers (steering's generate), only when on
        settings["options"] = sweep.id_options
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def axis_order(sweep: Sweep) -> list[str]:
    """Model and precision, then seed and family outermost so that consecutive trials share an actor's (model,
    precision) and cached baselines."""
    return [*(a for a in ("model", "precision") if a in sweep.axes), "seed", "family",
            *(["length"] if "length" in sweep.axes else []),  # each bucket's items are their own baselines
            *[a for a in kind_axes(sweep.kind) if a in sweep.axes]]  # optional axes may be absent


def packs(sweep: Sweep, points: list[Point]) -> list[list[Point]]:
    """Runs of consecutive points that differ only along the kind's pack axes, at most `sweep.pack_size` each:
    one Ray Tune trial and one batched forward per pack, one MLflow run per point."""
    free = set(sweep.kind.pack_axes)

    def shared(p: Point) -> str:
        return json.dumps({a: v for a, v in p.values.items() if a not in free}, sort_keys=True)

    out = []
    for _, run in itertools.groupby(points, key=shared):
        run = list(run)
        out += [run[i:i + sweep.pack_size] for i in range(0, len(run), sweep.pack_size)]
    return out


def table_values(points: list[Point]) -> list[dict]:
    """The points' axis values as table cells: list values (skip sets, layer sets) as their JSON text, and every
    value of an axis that has a list somewhere too (a column of one type: 14 and [6, 21] become "14", "[6, 21]")."""
    listed = {k for p in points for k, v in p.values.items() if isinstance(v, list)}
    return [{k: json.dumps(v) if k in listed else v for k, v in p.values.items()} for p in points]


def expand(sweep: Sweep) -> list[Point]:
    """Every grid point, model by model and precision by precision (a `model` / `precision` axis: each point's
    values start with them)."""
    return [point for part in sweep.parts for point in _expand_part(sweep, part)]


def _expand_part(sweep: Sweep, part: Part) -> list[Point]:
    digests = {key: split.digest() for key, split in part.splits.items()}
    combos = kind_points(sweep.kind, part.axes, part.model, sweep.options)
    model = {"model": part.name} if "model" in sweep.axes else {}
    points = []
    lengths, precisions = ([{a: v} for v in part.axes[a]] if a in part.axes else [{}] for a in ("length", "precision"))
    for precision, seed, family, length, combo in itertools.product(precisions, part.axes["seed"],
                                                                    part.axes["family"], lengths, combos):
        values = {**model, **precision, "seed": seed, "family": family, **length, **combo}
        points.append(Point(trial_id(sweep, part, values, digests), values, part.name))
    return points
