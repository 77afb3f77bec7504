"""Report sections: the SECTIONS registry (experiment kind -> figures, claim cards, end-of-sweep summary) and the
tables they share.

A section builder takes a `SweepRecord` (the sweep's FINISHED runs as a tidy table) and
returns a `Section`; a kind's report is one `@section("kind", ...)` entry in a module of this
package (listed in SECTIONS' sources). A kind without one gets `generic_section`: its primary
metric by layer (if it has a layer axis) and no cards.
Cross-seed numbers follow DESIGN §8: per seed, a metric is first averaged over the task
families; mean, std (ddof=1) and n are then taken over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

import adapters  # noqa: F401  (the kinds above interventions: adapters adds its own to KINDS)
from interventions.registry import Registry
from orchestrator.aggregate import aggregate
from orchestrator.numbers import fmt
from orchestrator.report.claims import ClaimCard, Evidence, card
from orchestrator.report.hubs import METRIC, Summary, hub_of, mode_and_std, per_axis, per_model
from orchestrator.report.record import SweepRecord


@dataclass
class Shown:
    """A figure in a report: `id` is what claim cards point at, and the PNG's file name."""

    id: str
    title: str
    caption: str
    figure: Figure


@dataclass
class Section:
    title: str
    figures: list[Shown] = field(default_factory=list)
    cards: list[ClaimCard] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (title, table): shown as HTML tables


@dataclass
class Profile:
    """One number per (seed, layer) for `compare`: columns seed, layer, effect; `hubs`: seed -> the marked layer."""

    frame: pd.DataFrame
    label: str  # what `effect` is, as an axis label
    hubs: pd.Series
    marker: str  # what the marked layer is, as a noun phrase ("the hub"); `hubs` holds it per seed
    short: str = "peak"  # its one-word name on figures and tables: only ablation profiles have a "hub"


@dataclass(frozen=True, kw_only=True)
class SectionKind:
    """The orchestrator's side of an experiment kind (interventions.KINDS holds the rest)."""

    build: Callable[[SweepRecord], Section]  # the report section
    profile: Callable[[SweepRecord], Profile] | None = None  # the layer profile `compare` puts on a depth axis
    summary: Callable[[pd.DataFrame], Summary] | None = None  # printed and logged at the end of a sweep (per model,
    # per value of the length and precision axes, then what compares those values: `across`)
    scale_card: Callable[[list[SweepRecord], str], ClaimCard | None] | None = None  # a sweep of several models: the
    # kind's cross-model card from each model's record, pointing at the depth figure (scale.py)
    across: dict[str, Callable[[pd.DataFrame], Summary]] = field(default_factory=dict)  # axis -> what compares its
    # values in the end-of-sweep summary (tables: the hub per family across lengths)
    compare: dict[str, Callable[[pd.DataFrame], Section]] = field(default_factory=dict)  # axis -> the same as
    # claim cards and figures on the report page (across.py)


SECTIONS: Registry[SectionKind] = Registry("report section", sources=(
    "orchestrator.report.sections.steering", "orchestrator.report.sections.ablation",
    "orchestrator.report.sections.layers", "orchestrator.report.sections.adapters",
    "orchestrator.report.sections.generation"))


def section(kind: str, **declaration):
    """Register `build(record) -> Section` as the report of experiment kind `kind` (with `profile`, `summary`,
    `scale_card`, `across`, `compare`; a summary is run on each model's rows apart when a sweep's rows hold several,
    see hubs.per_model, and on each length bucket's and each precision's; `across: {axis: fn}` adds what compares an
    axis' values when the rows hold several, hubs.per_axis; `compare: {axis: fn}` puts it on the report page as
    cards, across.py)."""
    across = declaration.get("across", {})  # axis (hubs.ACROSS) -> what compares its values (the hub moves?)
    summary = declaration.get("summary")
    if summary is not None or across:
        summary = summary or (lambda frame: Summary({}, {}))
        for axis in ("length", "precision"):  # innermost first: a precision's rows, then each bucket's
            summary = per_axis(axis, summary, across.get(axis))
        declaration["summary"] = per_model(summary)

    def add(build: Callable[[SweepRecord], Section]) -> Callable[[SweepRecord], Section]:
        SECTIONS.register(kind)(SectionKind(build=build, **declaration))
        return build

    return add


def build(record: SweepRecord) -> Section:
    """The report section of the record's kind; `generic_section` for a kind without its own. A record holding
    several prompt lengths or precisions gets the comparison across them, then each one's section (across.py)."""
    from orchestrator.report.across import axis_to_split, values_section

    axis = axis_to_split(record)
    if axis is not None:
        return values_section(record, axis, build)
    return SECTIONS.get(record.kind).build(record) if record.kind in SECTIONS else generic_section(record)


def seed_means(frame: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Per seed and point of `by`: `metric` averaged over families (runs without the metric left out)."""
    rows = frame.dropna(subset=[metric])
    return rows.groupby(["seed", *by], as_index=False, sort=True)[metric].mean()


def over_seeds(per_seed: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Columns *by, mean, std (ddof=1), n over seeds, in `by` order (aggregate.py's statistics)."""
    table = aggregate(per_seed.to_dict("records"), by, [metric], metric)
    table = table.rename(columns={f"{metric}_{s}": s for s in ("mean", "std", "n")})
    return table[[*by, "mean", "std", "n"]].sort_values(by).reset_index(drop=True)


def long_stats(per_seed: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """over_seeds for several metrics stacked: columns *by, metric, mean, std, n."""
    parts = [over_seeds(per_seed.dropna(subset=[m]), by, m).assign(metric=m) for m in metrics if m in per_seed]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*by, "metric", "mean", "std", "n"])


def as_profile(per_seed: pd.DataFrame, layer: str, metric: str) -> pd.DataFrame:
    """seed, layer, effect: the shape atlas.py's hub functions read."""
    return per_seed.rename(columns={layer: "layer", metric: METRIC})[["seed", "layer", METRIC]]


def location_evidence(profile: pd.DataFrame, layer: int, top: int = 1, largest: bool = True) -> Evidence:
    """Per seed: the effect at `layer`; the seed agrees if `layer` is its peak (top=1) or among its `top` layers.

    The control is the seed's median layer: a claim that a layer stands out must beat the typical layer.
    """
    pivot = profile.pivot(index="seed", columns="layer", values=METRIC)
    values = pivot[layer].dropna()
    if top == 1:
        best = hub_of(profile if largest else profile.assign(**{METRIC: -profile[METRIC]}))
        agree = {s: int(best[s]) == layer for s in values.index}
    else:
        ranks = pivot.rank(axis=1, ascending=not largest, method="min")
        agree = {s: bool(ranks.loc[s, layer] <= top) for s in values.index}
    control = pivot.median(axis=1).loc[values.index]
    return Evidence({int(s): float(v) for s, v in values.items()}, {int(s): a for s, a in agree.items()},
                    {int(s): float(v) for s, v in control.items()}, 1 if largest else -1)


def peak(profile: pd.DataFrame, largest: bool = True) -> tuple[int, float, pd.Series]:
    """The cross-seed mode of the per-seed peak layer, its std, and the per-seed peaks."""
    hubs = hub_of(profile if largest else profile.assign(**{METRIC: -profile[METRIC]}))
    mode, std = mode_and_std(hubs)
    return mode, std, hubs


def peak_card(profile: pd.DataFrame, n_layers: int, claim: str, figure: str, metric: str, largest: bool = True,
              caveats=()) -> ClaimCard:
    """A card for 'layer L stands out': L is the mode of the per-seed peaks; `claim` may use {layer}, {depth},
    {mean}, {std}, {k}, {n}, {layer_std} and {seeds} (the per-seed peaks)."""
    mode, std, hubs = peak(profile, largest)
    ev = location_evidence(profile, mode, 1, largest)
    values = list(ev.values.values())
    mean = sum(values) / len(values)
    sd = pd.Series(values).std(ddof=1) if len(values) > 1 else float("nan")
    text = claim.format(layer=mode, depth=f"{mode / n_layers:.0%}", mean=fmt(mean), std=fmt(sd, '.2g'), k=ev.n_agree,
                        n=ev.n, layer_std=fmt(std, '.2g'), seeds=", ".join(f"L{int(h)}" for h in hubs))
    return card(text, figure, metric, ev, "the median layer of the same profile, per seed", caveats,
                layer=mode, depth=mode / n_layers, layer_std=std)


def generic_section(record: SweepRecord) -> Section:
    """Any kind: its primary metric against each layer axis (mean ± std over seeds of the family mean); no cards."""
    from interventions.kinds import KINDS
    from orchestrator.report.figures import lines_by_layer

    kind = KINDS.get(record.kind)
    result = Section(kind.name)
    for axis in (a for a in kind.layer_axes if a in record.frame):
        per_seed = seed_means(record.frame.assign(panel=kind.primary, line="all families"),
                              ["panel", "line", axis], kind.primary)
        stats = over_seeds(per_seed, ["panel", "line", axis], kind.primary)
        result.figures.append(Shown(f"{kind.name}_{axis}", f"{kind.primary} by {axis}",
                                    "Mean over seeds of the family-mean value; band ± cross-seed std (ddof=1).",
                                    lines_by_layer(stats, "panel", "line", kind.primary, x=axis, xlabel=axis)))
    if not result.figures:
        result.notes.append(f"kind {kind.name} has no layer axis and no report section: see the aggregate table")
    return result
