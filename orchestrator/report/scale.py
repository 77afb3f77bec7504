"""Several models in one sweep: their profiles on one depth axis, a scale table, cross-model cards, then each model."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from orchestrator.report.claims import ClaimCard, Evidence, card, ranked
from orchestrator.report.figures import depth_compare, table_figure
from orchestrator.report.hubs import METRIC, mode_and_std, safe_name
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import (
    SECTIONS,
    Profile,
    Section,
    Shown,
    build,
    over_seeds,
)


@dataclass
class Placed:
    """One record's layer profile on the depth axis (layer / n_layers)."""

    label: str  # the model, or "sweep (model)" in compare
    record: SweepRecord
    profile: Profile
    stats: pd.DataFrame  # layer, mean, std, n over seeds, depth
    mode: int  # the marked layer: the cross-seed mode of the per-seed one
    depths: dict[int, float]  # seed -> its marked layer / n_layers


def place(record: SweepRecord, label: str) -> Placed | None:
    """The kind's profile of `record` on the depth axis; None if it has no point to mark."""
    prof = SECTIONS.get(record.kind).profile(record)
    if prof.frame.empty or prof.hubs.empty:
        return None
    table = over_seeds(prof.frame, ["layer"], METRIC)
    return Placed(label, record, prof, table.assign(depth=table["layer"] / record.n_layers), mode_and_std(prof.hubs)[0],
                  {int(s): h / record.n_layers for s, h in prof.hubs.items()})


def depth_figure(placed: list[Placed], fig_id: str, what: str = "", noun: str = "model") -> Shown:
    """The profiles against depth, one panel each, then overlaid (each scaled to its peak)."""
    first = placed[0].profile
    return Shown(fig_id, f"{first.label} against depth{what}",
                 f"Left panels: each {noun}'s mean over seeds (band ± "
                 f"cross-seed std) with its {first.short} (dashed); last: all scaled to their own peak, on one depth "
                 "axis (layer / n_layers).",
                 depth_compare({p.label: p.stats for p in placed},
                               {p.label: p.mode / p.record.n_layers for p in placed}, first.label, first.short))


def moved_card(a: Placed, b: Placed, figure: str, caveats=(), cap: str = "A", cap_why: str = "") -> ClaimCard | None:
    """'The marked layer sits deeper (shallower) in B than in A': B's per-seed depths against A's as the control."""
    mean_a, mean_b = np.mean(list(a.depths.values())), np.mean(list(b.depths.values()))
    if mean_a == mean_b:
        return None
    sign = 1 if mean_b > mean_a else -1
    ev = Evidence(b.depths, {s: sign * (d - mean_a) > 0 for s, d in b.depths.items()}, a.depths, sign)
    digits = next(d for d in (2, 3, 4, 6) if f"{mean_a:.{d}f}" != f"{mean_b:.{d}f}" or d == 6)  # never "0.93 vs 0.93"
    return card(f"{b.profile.marker.capitalize()} sits {'deeper' if sign > 0 else 'shallower'} in {b.label}: depth "
                f"{mean_b:.{digits}f} against {mean_a:.{digits}f} in {a.label}.", figure,
                f"depth of {b.profile.marker} per seed", ev, f"{a.label}'s depths, per seed",
                [f"seeds of {a.label} and {b.label} are not paired: the control is the other's spread", *caveats],
                cap, cap_why, depth_a=mean_a, depth_b=mean_b)


def scale_table(placed: list[Placed]) -> pd.DataFrame:
    """Per model: n_layers, the marked layer, its depth, the cross-seed std (ddof=1) of the per-seed depth, seeds."""
    return pd.DataFrame([{"model": p.label, "n_layers": p.record.n_layers, p.profile.short: f"L{p.mode}",
                          "depth": round(p.mode / p.record.n_layers, 2),
                          "depth std": round(pd.Series(p.depths).std(ddof=1), 2) if len(p.depths) > 1 else np.nan,
                          "seeds": len(p.depths)} for p in placed])


def positions_variants(record: SweepRecord) -> list[tuple[str, SweepRecord]]:
    """(label, record of one positions value) per ablation positions variant; [("", record)] without several."""
    column = record.frame["positions"].astype(str) if "positions" in record.frame else None
    values = sorted(column[record.frame["positions"].notna()].unique()) if column is not None else []
    if len(values) < 2:
        return [("", record)]
    return [(f"positions {v}", replace(record, frame=record.frame[column == v].reset_index(drop=True)))
            for v in values]


def scale_section(record: SweepRecord) -> Section:
    """The cross-model part: per positions variant, the profiles on one depth axis, the scale table and the cards."""
    result = Section("Across models")
    entry = SECTIONS.get(record.kind) if record.kind in SECTIONS else None
    if entry is None or entry.profile is None:
        result.notes.append(f"kind {record.kind} has no layer profile: its models are not put on one depth axis")
        return result
    for variant, one in positions_variants(record):
        models = one.by_model()
        placed = [p for p in (place(rec, rec.model) for rec in models) if p is not None]
        tag, what = (f"_{safe_name(variant)}", f" ({variant})") if variant else ("", "")
        if len(placed) < 2:
            result.notes.append(f"fewer than two models with a layer profile{what}: no cross-model figure")
            continue
        fig_id = f"scale_depth{tag}"
        result.figures += [depth_figure(placed, fig_id, what),
                           Shown(f"scale_table{tag}", f"Scale table{what}",
                                 f"Per model: its {placed[0].profile.short} (the cross-seed mode), as depth = layer / "
                                 "n_layers, and the cross-seed std (ddof=1) of the per-seed depth.",
                                 table_figure(scale_table(placed), f"{placed[0].profile.label}{what}"))]
        cards = [moved_card(a, b, fig_id) for a, b in zip(placed, placed[1:])]
        result.notes += [f"{b.profile.marker} sits at the same mean depth in {a.label} and {b.label}{what}: no card "
                         "on its move" for a, b, c in zip(placed, placed[1:], cards) if c is None]
        cards.append(entry.scale_card(models, fig_id) if entry.scale_card is not None else None)  # the kind's own
        result.cards += [replace(c, claim=f"{c.claim[:-1]} ({variant}).") if variant else c for c in cards if c]
    return result


def models_section(record: SweepRecord) -> Section:
    """The page of a sweep of several models: the cross-model part, then each model's own section (figure ids and
    card claims prefixed with the model); cards stay in that order, each part ranked."""
    result = scale_section(record)
    result.title, result.cards = f"{len(record.models)} models", ranked(result.cards)
    result.notes.append("claim cards: the cross-model ones first, then each model's; each part ranked")
    for one in record.by_model():
        append(result, namespaced(build(one), one.model))
    return result


def append(result: Section, part: Section) -> None:
    """`part`'s figures, cards (ranked among themselves), notes and tables after `result`'s."""
    result.figures += part.figures
    result.cards += ranked(part.cards)
    result.notes += part.notes
    result.tables += part.tables


def namespaced(part: Section, label: str) -> Section:
    """A section with its figure ids, figure titles, card claims, notes and tables prefixed by `label` (a model, or
    "length short")."""
    prefix = safe_name(label)
    ids = {s.id: f"{prefix}_{s.id}" for s in part.figures}
    figures = [replace(s, id=ids[s.id], title=f"{label}: {s.title}") for s in part.figures]
    cards = [replace(c, claim=f"{label}: {c.claim}", figure=ids.get(c.figure, f"{prefix}_{c.figure}"))
             for c in part.cards]
    return Section(f"{label}: {part.title}", figures, cards, [f"{label}: {n}" for n in part.notes],
                   [(f"{label}: {name}", table) for name, table in part.tables])
