"""The ablation report: effect by layer per component / method with the hub, per-family small multiples, Spearman.

The effect and the hub are hubs.py's (KL, recovery for denoising; per seed the layer
with the largest family-mean effect; cross-seed mode). Cards: the hub of every (component,
method); the runner-up layers of the main profile (DESIGN's hub: `layer` / `mean`, else the
first); families whose own hub differs; and, with several methods, whether they rank layers alike.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from interventions.ablation import HUB, effect_metric
from orchestrator.numbers import fmt
from orchestrator.report import screen, separability
from orchestrator.report.across import compare_picks
from orchestrator.report.claims import ClaimCard, Evidence, card
from orchestrator.report.figures import layer_profiles as profile_figure
from orchestrator.report.figures import matrix
from orchestrator.report.hubs import (
    METRIC,
    ablation_summary,
    hub_picks,
    hubs_across_lengths,
    hubs_across_precisions,
    layer_profiles,
    layer_spearman,
    mode_and_std,
    rank_stability,
    sink_writers,
    top_layers,
    with_variants,
)
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import (
    Profile,
    Section,
    Shown,
    location_evidence,
    over_seeds,
    peak,
    peak_card,
    section,
)


def _label(method: str) -> str:
    return "recovery (family mean)" if effect_metric(method) == "recovery" else "KL (family mean)"


def _main(profiles: pd.DataFrame) -> tuple[str, str] | None:
    """The (component, method) whose profile marks the hub: HUB if swept, else the first; None without a layer-wise
    component (a sweep of heads only)."""
    pairs = list(dict.fromkeys(zip(profiles["component"], profiles["method"])))
    return HUB if HUB in pairs else pairs[0] if pairs else None


def ablation_profile(record: SweepRecord) -> Profile:
    record = replace(record, frame=with_variants(record.frame))  # methods named with their positions variant
    profiles = layer_profiles(record.frame)
    pair = _main(profiles)
    if pair is None:
        return Profile(pd.DataFrame(columns=["seed", "layer", METRIC]), "", pd.Series(dtype=float), "the hub", "hub")
    component, method = pair
    main = profiles[(profiles["component"] == component) & (profiles["method"] == method)]
    return Profile(main[["seed", "layer", METRIC]], f"{component}/{method}: {_label(method)}", peak(main)[2],
                   "the hub", "hub")


def _joined(evs: dict[str, Evidence]) -> Evidence:
    """Several models' evidence as one: per seed (of all of them) the mean value and control; agreeing in every one."""
    seeds = sorted(set.intersection(*(set(e.values) for e in evs.values())))
    mean = {s: float(np.mean([e.values[s] for e in evs.values()])) for s in seeds}
    control = {s: float(np.mean([e.control[s] for e in evs.values()])) for s in seeds}
    return Evidence(mean, {s: all(e.agree[s] for e in evs.values()) for s in seeds}, control, 1)


def mlp_scale_card(models: list[SweepRecord], figure: str) -> ClaimCard | None:
    """'L's MLP is the top MLP in every model' (L: the most common of the models' MLP hubs), or which break it."""
    parts = {}
    for rec in models:
        profiles = layer_profiles(rec.frame)
        mlp = profiles[profiles["component"] == "mlp"]
        if mlp.empty:
            return None
        methods = list(dict.fromkeys(mlp["method"]))
        method = min(methods, key=lambda m: (m.split("[")[0] != HUB[1], methods.index(m)))
        parts[rec.model] = mlp[mlp["method"] == method][["seed", "layer", METRIC]]
    hubs = {model: peak(part)[0] for model, part in parts.items()}
    layer = mode_and_std(pd.Series(list(hubs.values())))[0]
    broken = {m: h for m, h in hubs.items() if h != layer}
    ev = _joined({m: location_evidence(part, layer) for m, part in parts.items() if m not in broken})
    where = ("every model" if not broken else ", ".join(m for m in parts if m not in broken) + " but not in "
             + ", ".join(f"{m} (its top MLP: L{h})" for m, h in broken.items()))
    return card(f"L{layer}'s MLP is the top MLP (mlp/{method}) in {where}.", figure,
                "mlp effect at the layer, mean over the models", ev,
                "the median MLP layer of the same model, per seed (mean over the models)",
                [f"MLP hub per model: {', '.join(f'{m} L{h}' for m, h in hubs.items())}; a seed agrees if the "
                 "layer is its top MLP in each of these models"], layer=layer, broken=broken)


@section("ablation", profile=ablation_profile, summary=ablation_summary, scale_card=mlp_scale_card,
         across={"length": hubs_across_lengths, "precision": hubs_across_precisions},
         compare={axis: compare_picks(axis, "hub", hub_picks, numeric=True) for axis in ("length", "precision")})
def ablation_section(record: SweepRecord) -> Section:
    """Layer profiles, hubs and their cards from exact runs; a screened sweep adds its screen (estimates marked apart
    from exact points, their agreement) and draws profiles only for the panels whose every point ran exactly."""
    if not len(record.estimates):
        return _exact_section(record)
    result = _exact_section(screen.complete(record), "no component / method has every grid point exact")
    table = screen.joined(record)
    result.figures.append(Shown("screen", "Screen: estimated vs exact LD shift",
                                "Per component / method, points by their rank in |estimated LD shift| (attribution "
                                "patching): hollow grey = estimate, filled = exact run (red: top-k, blue: random "
                                "sample); dashed: the top-k boundary. Claims stand only on exact runs.",
                                screen.figure(table)))
    result.notes += screen.notes(screen.agreement(table))
    result.cards += screen.cards(table, record.n_layers)
    return result


def _exact_section(record: SweepRecord, empty: str = "only head trials") -> Section:
    record = replace(record, frame=with_variants(record.frame))  # methods named with their positions variant
    profiles = layer_profiles(record.frame)
    if profiles.empty:
        return Section("Ablation", notes=[f"{empty}: no layer profile to draw"])
    profiles = profiles.assign(panel=profiles["component"] + " / " + profiles["method"])
    stats = over_seeds(profiles, ["panel", "layer"], METRIC)
    stats["panel"] = pd.Categorical(stats["panel"], list(dict.fromkeys(profiles["panel"])), ordered=True)
    stats = stats.sort_values(["panel", "layer"])
    stats["panel"] = stats["panel"].astype(str)
    hubs = {name: peak(part)[0] for name, part in profiles.groupby("panel", sort=False)}
    labels = {name: _label(name.split(" / ")[1]) for name in hubs}
    seeds = profiles["seed"].nunique()
    result = Section("Ablation", [Shown(
        "ablation_profiles", "Ablation effect by layer per component / method",
        f"Line: mean over {seeds} seeds of the family-mean effect (KL; recovery for clean_to_corrupt); band: ± the "
        "cross-seed std (ddof=1); dashed: the hub (cross-seed mode of the per-seed peak layer).",
        profile_figure(stats, hubs, labels))])
    for (component, method), part in profiles.groupby(["component", "method"], sort=False):
        result.cards.append(peak_card(
            part, record.n_layers, f"{component}/{method}: L{{layer}} is the hub ({{depth}} depth), the largest "
            f"family-mean {_label(method).split(' ')[0]} of any layer, {{mean}} ± {{std}}; peak layer per seed: "
            "{seeds}.", "ablation_profiles", _label(method), caveats=_hub_caveats(record, component, method)))
    component, method = _main(profiles)
    main = profiles[(profiles["component"] == component) & (profiles["method"] == method)]
    result.cards += _runner_up_cards(main, record.n_layers, f"{component}/{method}", _label(method))
    result.figures.append(_family_figure(record, component, method, result))
    result.figures += _spearman(profiles, result)
    result.notes += separability.notes(separability.over_seeds(separability.from_records([record])))
    return result


def _runner_up_cards(main: pd.DataFrame, n_layers: int, what: str, metric: str) -> list[ClaimCard]:
    hub = peak(main)[0]
    cards = []
    for layer in [x for x in top_layers(main, 3) if x != hub][:2]:
        ev = location_evidence(main, layer, top=3)
        values = pd.Series(ev.values)
        cards.append(card(
            f"{what}: L{layer} ({layer / n_layers:.0%} depth) is among the three strongest layers: "
            f"{metric.split(' ')[0]} "
            f"{fmt(values.mean())} ± {fmt(values.std(ddof=1), '.2g')} (top 3 in {ev.n_agree} of {ev.n} seeds).",
            "ablation_profiles", metric, ev, "the median layer of the same profile, per seed", layer=layer))
    return cards


def _family_figure(record: SweepRecord, component: str, method: str, result: Section) -> Shown:
    """Per-family small multiples of the main profile, each family's hub marked; a family whose hub differs gets
    a card."""
    frame = record.frame
    rows = frame[(frame["component"] == component) & (frame["method"] == method)]
    per_family = pd.concat([layer_profiles(part).assign(panel=family)
                            for family, part in rows.groupby("family", sort=True)], ignore_index=True)
    stats = over_seeds(per_family, ["panel", "layer"], METRIC)
    hubs = {family: peak(part)[0] for family, part in per_family.groupby("panel")}
    overall = peak(layer_profiles(rows))[0]
    for family, part in per_family.groupby("panel"):
        if hubs[family] != overall:
            result.cards.append(_family_card(part, family, hubs[family], overall, record.n_layers, method))
    return Shown("ablation_families", f"{component}/{method} by family",
                 f"One panel per task family: mean ± std over seeds of {_label(method).split(' ')[0]} by layer, the "
                 "family's own hub dashed (one y scale for all panels).",
                 profile_figure(stats, hubs, _label(method).split(" (")[0], cols=4, sharey=True))


def _family_card(part: pd.DataFrame, family: str, hub: int, overall: int, n_layers: int, method: str) -> ClaimCard:
    pivot = part.pivot(index="seed", columns="layer", values=METRIC)
    own = location_evidence(part, hub)
    ev = Evidence(own.values, own.agree, {int(s): float(v) for s, v in pivot[overall].items()}, 1)
    values = pd.Series(ev.values)
    return card(f"In {family} the hub is L{hub} ({hub / n_layers:.0%} depth), not the overall hub L{overall}: "
                f"{_label(method).split(' ')[0]} {fmt(values.mean())} ± {fmt(values.std(ddof=1), '.2g')} at L{hub} "
                "(the family's "
                f"own peak in {ev.n_agree} of {ev.n} seeds).", "ablation_families", _label(method), ev,
                f"the same family at the overall hub L{overall}, per seed", layer=hub)


def _spearman(profiles: pd.DataFrame, result: Section) -> list[Shown]:
    shown = []
    for component, part in profiles.groupby("component", sort=False):
        methods = list(dict.fromkeys(part["method"]))
        if len(methods) < 2:
            continue
        table = rank_stability(part)
        values = pd.DataFrame(1.0, index=methods, columns=methods)
        for _, r in table.iterrows():
            values.loc[r["method_a"], r["method_b"]] = values.loc[r["method_b"], r["method_a"]] = r["spearman"]
        fig_id = f"spearman_{component}"
        shown.append(Shown(fig_id, f"{component}: rank agreement between methods",
                           "Spearman correlation of the layers ranked by mean effect (over families and seeds).",
                           matrix(values, f"{component}: Spearman of layer rankings", "Spearman ρ")))
        result.cards.append(_rank_card(part, component, table, fig_id))
    return shown


def _rank_card(part: pd.DataFrame, component: str, table: pd.DataFrame, fig_id: str) -> ClaimCard:
    """Per seed: the median over method pairs of the Spearman correlation of that seed's layer profiles."""
    by = {m: rows.pivot(index="layer", columns="seed", values=METRIC) for m, rows in part.groupby("method")}
    seeds = sorted(set(part["seed"]))
    median = {}
    for seed in seeds:
        rhos = [layer_spearman(by[a][seed], by[b][seed]) for a, b in zip(table["method_a"], table["method_b"])
                if seed in by[a] and seed in by[b]]
        rhos = [r for r in rhos if not pd.isna(r)]
        if rhos:
            median[int(seed)] = float(np.median(rhos))
    sign = 1 if sum(median.values()) >= 0 else -1
    ev = Evidence(median, {s: sign * v > 0 for s, v in median.items()}, None, sign)
    pooled = table["spearman"].dropna()
    return card(f"{component}: the {len(by)} methods rank layers {'alike' if sign > 0 else 'in opposite orders'}: "
                f"median pairwise Spearman ρ {np.median(pooled):.2f} (range {pooled.min():.2f} to {pooled.max():.2f}) "
                f"on seed-mean profiles; the top-3 layers agree in {int(table['top3_agree'].sum())} of {len(table)} "
                "pairs.", fig_id, "median pairwise Spearman ρ per seed", ev,
                caveats=["no control for a rank correlation: at best B"])


def _hub_caveats(record: SweepRecord, component: str, method: str) -> list[str]:
    frame = record.frame
    rows = frame[(frame["component"] == component) & (frame["method"] == method)]
    notes = [f"{rows['family'].nunique()} families, {rows['layer'].nunique()} of {record.n_layers} layers swept"]
    if "accuracy_clean" in rows:
        weak = rows.groupby("family")["accuracy_clean"].mean()
        weak = weak[weak < 0.5]
        if len(weak):
            notes.append("clean accuracy below 50% in " + ", ".join(f"{f} ({v:.0%})" for f, v in weak.items()))
    writers = sink_writers(frame)
    hub = peak(layer_profiles(rows))[0] if writers and len(rows) else None
    if hub in writers:
        below, here = writers[hub]
        notes.append(f"L{hub} is where the first-position activation is written (first-position norm ratio "
                     f"{fmt(below)} below it, {fmt(here)} here): compare positions: all_but_first")
    return notes
