"""`compare SWEEP_A SWEEP_B`: two one-model sweeps' layer profiles on one depth axis (layer / n_layers).

The sweeps must be of one kind and profile one metric; where their other settings differ
(families, components, methods, positions, strengths, ...) the card on the move says which
and is capped at C.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from interventions.kinds import KINDS
from interventions.registry import AtlasError
from orchestrator.numbers import fmt
from orchestrator.report.claims import ClaimCard, Evidence, card, ranked
from orchestrator.report.html import Report, write_page
from orchestrator.report.record import SweepRecord, read
from orchestrator.report.scale import Placed, depth_figure, moved_card, place
from orchestrator.report.sections import SECTIONS, location_evidence
from orchestrator.store import store_dir


def write_compare(uri: str, name_a: str, name_b: str, out: Path | None = None) -> Report:
    """Two sweeps of one kind: their layer profiles against depth = layer / n_layers, marked layers as depths."""
    records = [read(uri, name_a, "SWEEP_A"), read(uri, name_b, "SWEEP_B")]
    a, b = records
    for rec, argument in zip(records, ("SWEEP_A", "SWEEP_B")):
        if len(rec.models) > 1:
            raise AtlasError(f"{argument}: {rec.name!r} holds runs of {len(rec.models)} models "
                             f"({', '.join(rec.models)}); compare takes one-model sweeps (`report {rec.name}` "
                             "compares its models)")
    if a.kind != b.kind:
        raise AtlasError(f"SWEEP_B: {b.name!r} is a sweep of kind {b.kind} and {a.name!r} of kind {a.kind}; "
                         "compare needs two sweeps of one kind")
    entry = SECTIONS.get(a.kind) if a.kind in SECTIONS else None
    if entry is None or entry.profile is None:
        raise AtlasError(f"SWEEP_A: no layer profile to compare for experiment kind {a.kind!r}")
    placed = [place(rec, f"{rec.name} ({rec.model})") for rec in records]
    for p, argument in zip(placed, ("SWEEP_A", "SWEEP_B")):
        if p is None:
            raise AtlasError(f"{argument}: no layer profile to compare in this sweep's runs")
    pa, pb = placed
    if pa.profile.label != pb.profile.label:
        raise AtlasError(f"SWEEP_B: {b.name!r} profiles {pb.profile.label!r} and {a.name!r} {pa.profile.label!r}; "
                         "compare needs one metric")
    cards = [_location_card(p) for p in placed]
    facts = [(p.label, f"{p.record.n_layers} layers; {p.profile.marker}: L{p.mode} = depth "
                       f"{p.mode / p.record.n_layers:.2f} (per seed: "
                       f"{', '.join(f'L{int(h)}' for h in p.profile.hubs)})") for p in placed]
    differ = differing(a, b)
    notes = [*a.notes, *b.notes]
    if differ:
        facts.append(("settings that differ", "; ".join(differ)))
    moved = moved_card(pa, pb, "compare_depth", [f"the sweeps differ in {d}" for d in differ], "C" if differ else "A",
                       f"the sweeps differ in {', '.join(d.split(' (')[0] for d in differ)}")
    if moved:
        cards.append(moved)
    else:
        notes.append(f"{pa.profile.marker} sits at the same mean depth in both sweeps: no card on its move")
    out = out or store_dir() / "reports" / f"compare_{a.name}_vs_{b.name}"
    return write_page(out, "compare.html", f"compare {a.name} vs {b.name} ({a.kind})", facts,
                      notes, [depth_figure(placed, "compare_depth", noun="sweep")], ranked(cards))


def differing(a: SweepRecord, b: SweepRecord) -> list[str]:
    """The axes (but seed and the layer axes) whose value sets differ: "family (A: x, y; B: x)"."""
    kind = KINDS.get(a.kind)  # its layer axes may differ: they hold each model's own layers
    layers = {"seed", *kind.layer_axes, *kind.set_axes}
    out = []
    for axis in dict.fromkeys([*a.axes, *b.axes]):
        values = [", ".join(sorted(map(str, r.frame[axis].dropna().unique()))) if axis in r.frame else ""
                  for r in (a, b)]
        if axis not in layers and values[0] != values[1]:
            out.append(f"{axis} ({a.name}: {values[0] or 'none'}; {b.name}: {values[1] or 'none'})")
    return out


def _location_card(p: Placed) -> ClaimCard:
    rec, prof, mode = p.record, p.profile, p.mode
    ev = location_evidence(prof.frame, mode)
    ev = Evidence(ev.values, {s: int(prof.hubs.get(s, -1)) == mode for s in ev.values}, ev.control, 1)
    values = pd.Series(ev.values)
    return card(f"{rec.name} ({rec.model}, {rec.n_layers} layers): {prof.marker} is L{mode}, depth "
                f"{mode / rec.n_layers:.2f} ({prof.label} {fmt(values.mean())} ± {fmt(values.std(ddof=1), '.2g')}).",
                "compare_depth", prof.label, ev, "the median layer of the same profile, per seed",
                layer=mode, depth=mode / rec.n_layers)
