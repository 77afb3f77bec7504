"""A sweep over several prompt lengths or precisions (hubs.ACROSS): per family, whether what the kind picks (the hub,
the strongest steering cell) moves across the values, as claim cards and a figure, then each value's own section.

A kind declares what it compares in its `@section(..., compare={axis: fn})` entry: `fn(frame) -> Section` with the
cards and figures; `values_section` puts them first on the page and each value's section (built from that value's
runs alone, figure ids and claims prefixed "length short: ...") after them.

Cards (graded by claims.py; no control: at best B). For a pick per family, seed and value (`picks`: columns family,
value, seed, pick): x_s = the number of values after the first at which seed s's own pick differs from its pick at
the first value. "moves" (the cross-seed picks differ across values) is supported by a seed whose x_s > 0, "stable"
by one whose x_s = 0. For steering across lengths: x_s = |gain_s(last bucket)| / |gain_s(first)| - HOLDS, the
seed's share of the first bucket's gain over the random vector kept at the longest, past the threshold; "holds" is
supported by x_s >= 0, "degrades" by x_s < 0.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from orchestrator.report.claims import ClaimCard, Evidence, card, ranked
from orchestrator.report.figures import new_figure
from orchestrator.report.hubs import ACROSS, ordered_values, safe_name
from orchestrator.report.record import SweepRecord
from orchestrator.report.scale import append, namespaced
from orchestrator.report.sections import SECTIONS, Section, Shown


def axis_to_split(record: SweepRecord) -> str | None:
    """The first of hubs.ACROSS' axes that the record's kind compares (`compare`) and the record holds two or more
    values of (None: none; a kind without a comparison, such as generation, shows every value in one section)."""
    frame = record.frame
    compared = SECTIONS.get(record.kind).compare if record.kind in SECTIONS else {}
    return next((a for a in ACROSS if a in compared and a in frame and frame[a].dropna().astype(str).nunique() > 1),
                None)


def values_section(record: SweepRecord, axis: str, build: Callable[[SweepRecord], Section]) -> Section:
    """The kind's comparison across `axis` (its `compare` entry), then `build` of each value's runs, namespaced."""
    plural = ACROSS[axis]
    kind = SECTIONS.get(record.kind)
    result = kind.compare[axis](record.frame)
    result.title = f"{record.kind} across {plural}"
    if axis in kind.across:  # the end-of-sweep tables that compare the values, as the sweep printed them
        result.tables += [(name.replace("_", " "), table.drop(columns=[c for c in ("stable", "holds", "moves")
                                                                      if c in table]))
                          for name, table in kind.across[axis](record.frame).tables.items()]
    result.cards = ranked(result.cards)
    result.notes.append(f"claim cards: those comparing {plural} first, then each {axis}'s own; each part ranked")
    for value in ordered_values(record.frame, axis):
        append(result, namespaced(build(record.rows_where(axis, value)), f"{axis} {value}"))
    return result


def moves_cards(picks: pd.DataFrame, axis: str, what: str, figure: str, label=str) -> list[ClaimCard]:
    """Per family, "<what> moves / is stable across <values>" from picks (family, value, seed, pick; values in
    order); the claim is the cross-seed mode's, the evidence each seed's own picks (module docstring)."""
    plural, cards = ACROSS[axis], []
    for family, own in picks.groupby("family", sort=False):
        order = list(dict.fromkeys(own["value"]))
        if len(order) < 2:
            continue
        pooled = {v: _mode(own[own["value"] == v]["pick"]) for v in order}
        moves = len(set(pooled.values())) > 1
        shifts = {}
        for seed, mine in own.groupby("seed"):
            pick = dict(zip(mine["value"], mine["pick"]))
            if order[0] in pick:
                shifts[int(seed)] = float(sum(pick[v] != pick[order[0]] for v in order[1:] if v in pick))
        agree = {s: (x > 0) == moves for s, x in shifts.items()}
        per_value = ", ".join(f"{v}: {label(p)}" for v, p in pooled.items())
        claim = (f"{family}: {what} moves across {plural} ({per_value})" if moves
                 else f"{family}: {what} stable across {plural} at {label(pooled[order[0]])}")
        cards.append(card(claim, figure, f"values where the seed's {what} differs from its {order[0]} one",
                          Evidence(shifts, agree, None, 1 if moves else -1),
                          caveats=[f"each seed's own {what} per {axis}: the cross-seed mode is what the claim names"]))
    return cards


def _mode(values: pd.Series):
    counts = values.value_counts()
    best = counts[counts == counts.max()].index
    return min(best) if all(isinstance(b, (int, np.integer)) for b in best) else sorted(map(str, best))[0]


def picks_figure(picks: pd.DataFrame, axis: str, what: str, numeric: bool) -> Shown:
    """Per family, each seed's pick per value (points) and the cross-seed mode (line, numeric picks only)."""
    families = list(dict.fromkeys(picks["family"]))
    fig, axes = new_figure(len(families), cols=min(3, len(families)), size=(3.8, 3.0))
    labels = sorted(picks["pick"].astype(str).unique()) if not numeric else []
    for ax, family in zip(axes, families):
        own = picks[picks["family"] == family]
        order = list(dict.fromkeys(own["value"]))
        x = {v: i for i, v in enumerate(order)}
        for k, (seed, mine) in enumerate(own.groupby("seed")):
            ys = mine["pick"] if numeric else mine["pick"].astype(str).map(labels.index)
            ax.scatter([x[v] + 0.08 * (k - 0.5) for v in mine["value"]], ys, s=22, label=f"seed {seed}")
        if numeric:
            ax.plot(range(len(order)), [_mode(own[own["value"] == v]["pick"]) for v in order], color="k", lw=1,
                    label="mode")
        else:
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xticks(range(len(order)), order)
        ax.set_title(family)
        ax.set_xlabel(axis)
        ax.set_ylabel(what)
    axes[0].legend(fontsize=7)
    return Shown(f"{safe_name(what)}_by_{axis}", f"{what} per family across {ACROSS[axis]}",
                 f"Each seed's own {what} per {axis} (points) and, where numeric, the cross-seed mode (line).", fig)


def compare_picks(axis: str, what: str, picks_of: Callable[[pd.DataFrame, str], pd.DataFrame],
                  numeric: bool) -> Callable[[pd.DataFrame], Section]:
    """A kind's `compare` entry from `picks_of(frame, axis)` (family, value, seed, pick): a figure and a card per
    family."""

    def compare(frame: pd.DataFrame) -> Section:
        picks = picks_of(frame, axis)
        result = Section("")
        if picks.empty:
            return result
        shown = picks_figure(picks, axis, what, numeric)
        result.figures.append(shown)
        result.cards += moves_cards(picks, axis, what, shown.id, (lambda p: f"L{p}") if numeric else str)
        return result

    return compare
