"""Grid expansion: the product of a sweep's axes, in actor-friendly order, each point with a stable trial_id."""
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
    if sweep.kind.uses_other_families:  # collateral metrics read the other families' items
        settings["families"] = sorted(items.values())
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def axis_order(sweep: Sweep) -> list[str]:
    """Seed and family outermost so that consecutive trials share an actor's cached baselines."""
    return ["seed", "family", *[a for a in kind_axes(sweep.kind) if a in sweep.axes]]  # optional axes may be absent


def expand(sweep: Sweep) -> list[Point]:
    digests = {key: split.digest() for key, split in sweep.splits.items()}
    combos = kind_points(sweep.kind, sweep.axes, sweep.model)
    points = []
    for seed, family, combo in itertools.product(sweep.axes["seed"], sweep.axes["family"], combos):
        values = {"seed": seed, "family": family, **combo}
        points.append(Point(trial_id(sweep, values, digests), values))
    return points
