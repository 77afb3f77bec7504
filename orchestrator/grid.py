"""Grid expansion: the product of a sweep's axes, in actor-friendly order, each point with a stable trial_id; packs."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from interventions.kinds import kind_axes, kind_points
from orchestrator.spec import Sweep


@dataclass(frozen=True)
class Point:
    trial_id: str
    values: dict  # axis -> value (family by name); an axis the point does not use is absent


def trial_id(sweep: Sweep, values: dict, digests: dict[tuple[str, int], str]) -> str:
    """Hash of everything that changes a grid point's numbers, items included; the same on any machine."""
    items = {f: digests[(f, values["seed"])] for f in sweep.axes["family"]}
    settings = {
        "model": sweep.spec.model,
        "kind": sweep.kind.name,
        "point": {**values, "family": items[values["family"]]},
    }
    if sweep.spec.dtype != "float32":  # absent for float32: ids of sweeps from before the setting stay the same
        settings["dtype"] = sweep.spec.dtype
    if sweep.kind.uses_other_families:  # collateral metrics read the other families' items
        settings["families"] = sorted(items.values())
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def axis_order(sweep: Sweep) -> list[str]:
    """Seed and family outermost so that consecutive trials share an actor's cached baselines."""
    return ["seed", "family", *[a for a in kind_axes(sweep.kind) if a in sweep.axes]]  # optional axes may be absent


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


def expand(sweep: Sweep) -> list[Point]:
    digests = {key: split.digest() for key, split in sweep.splits.items()}
    combos = kind_points(sweep.kind, sweep.axes, sweep.model)
    points = []
    for seed, family, combo in itertools.product(sweep.axes["seed"], sweep.axes["family"], combos):
        values = {"seed": seed, "family": family, **combo}
        points.append(Point(trial_id(sweep, values, digests), values))
    return points
