"""`compare SWEEP_A SWEEP_B`: two sweeps' layer profiles on one depth axis (layer / n_layers), hubs as depths."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from interventions.registry import AtlasError
from orchestrator.numbers import fmt
from orchestrator.report.claims import ClaimCard, Evidence, card, ranked
from orchestrator.report.figures import depth_compare
from orchestrator.report.html import Report, write_page
from orchestrator.report.hubs import mode_and_std
from orchestrator.report.record import SweepRecord, read
from orchestrator.report.sections import SECTIONS, Shown, location_evidence, over_seeds
from orchestrator.store import store_dir


def write_compare(uri: str, name_a: str, name_b: str, out: Path | None = None) -> Report:
    """Two sweeps of one kind: their layer profiles against depth = layer / n_layers, hubs as depth fractions."""
    records = [read(uri, name_a, "SWEEP_A"), read(uri, name_b, "SWEEP_B")]
    a, b = records
    if a.kind != b.kind:
        raise AtlasError(f"SWEEP_B: {b.name!r} is a sweep of kind {b.kind} and {a.name!r} of kind {a.kind}; "
                         "compare needs two sweeps of one kind")
    entry = SECTIONS.get(a.kind) if a.kind in SECTIONS else None
    if entry is None or entry.profile is None:
        raise AtlasError(f"SWEEP_A: no layer profile to compare for experiment kind {a.kind!r}")
    profiles, stats, hubs, cards, facts = {}, {}, {}, [], []
    for rec in records:
        prof = entry.profile(rec)
        label = f"{rec.name} ({rec.model})"
        table = over_seeds(prof.frame, ["layer"], "effect")
        stats[label] = table.assign(depth=table["layer"] / rec.n_layers)
        mode = mode_and_std(prof.hubs)[0]
        hubs[label], profiles[rec.name] = mode / rec.n_layers, prof
        cards.append(_hub_card(rec, prof, mode))
        facts.append((label, f"{rec.n_layers} layers; {prof.marker}: L{mode} = depth {mode / rec.n_layers:.2f} "
                             f"(per seed: {', '.join(f'L{int(h)}' for h in prof.hubs)})"))
    moved = _moved_card(records, profiles)
    notes = [*a.notes, *b.notes]
    if moved:
        cards.append(moved)
    else:
        notes.append(f"{profiles[a.name].marker} sits at the same mean depth in both sweeps: no card on its move")
    shown = Shown("compare_depth", f"{profiles[a.name].label} against depth",
                  "Left panels: each sweep's mean over seeds (band ± cross-seed std) with its marked layer; right: "
                  "both "
                  "scaled to their own peak, on one depth axis (layer / n_layers).",
                  depth_compare(stats, hubs, profiles[a.name].label))
    out = out or store_dir() / "reports" / f"compare_{a.name}_vs_{b.name}"
    return write_page(out, "compare.html", f"compare {a.name} vs {b.name} ({a.kind})", facts,
                  notes, [shown], ranked(cards))


def _hub_card(rec: SweepRecord, prof, mode: int) -> ClaimCard:
    ev = location_evidence(prof.frame, mode)
    ev = Evidence(ev.values, {s: int(prof.hubs.get(s, -1)) == mode for s in ev.values}, ev.control, 1)
    values = pd.Series(ev.values)
    return card(f"{rec.name} ({rec.model}, {rec.n_layers} layers): {prof.marker} is L{mode}, depth "
                f"{mode / rec.n_layers:.2f} ({prof.label} {fmt(values.mean())} ± {fmt(values.std(ddof=1), '.2g')}).",
                "compare_depth", prof.label, ev, "the median layer of the same profile, per seed",
                layer=mode, depth=mode / rec.n_layers)


def _moved_card(records: list[SweepRecord], profiles: dict) -> ClaimCard | None:
    """'The marked layer sits deeper (shallower) in B than in A': B's per-seed depths against A's as the control."""
    a, b = records
    depth_a = {int(s): h / a.n_layers for s, h in profiles[a.name].hubs.items()}
    depth_b = {int(s): h / b.n_layers for s, h in profiles[b.name].hubs.items()}
    mean_a, mean_b = sum(depth_a.values()) / len(depth_a), sum(depth_b.values()) / len(depth_b)
    if mean_a == mean_b:
        return None
    sign = 1 if mean_b > mean_a else -1
    ev = Evidence(depth_b, {s: sign * (d - mean_a) > 0 for s, d in depth_b.items()}, depth_a, sign)
    return card(f"{profiles[b.name].marker.capitalize()} sits {'deeper' if sign > 0 else 'shallower'} in {b.name} "
                f"({b.model}): depth {mean_b:.2f} against {mean_a:.2f} in {a.name} ({a.model}).", "compare_depth",
                "depth of the marked layer per seed", ev, f"{a.name}'s depths, per seed",
                ["seeds of the two sweeps are not paired: the control is the other sweep's spread"])


