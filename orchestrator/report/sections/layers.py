"""Skip and early-exit reports: KL and top-1 / top-5 agreement with the full model by layer, and their cards.

Skip: single-layer skip sets become a curve by layer; larger sets are bars. Cards: the most
and the least harmful single-layer skip (by family-mean KL; control: the median single-layer
skip of the same seed). Early exit (logit lens): the best exit before the last layer (by
top-1 agreement; control: the median exit layer before the last) and the layer where top-5
overlap jumps most (the last layer left out: its logit lens is the full model).
"""
from __future__ import annotations

import json

import pandas as pd

from orchestrator.report.claims import ClaimCard, Evidence, card
from orchestrator.report.figures import agreement_curves, set_bars
from orchestrator.report.hubs import METRIC
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import (
    Profile,
    Section,
    Shown,
    as_profile,
    long_stats,
    peak,
    peak_card,
    section,
    seed_means,
)

METRICS = ["kl", "top1_agreement", "top5_overlap"]
KEEP = 0.5  # the top-5 overlap (top-1 agreement) a single-layer skip (an early exit) must keep to count as harmless


def _seed_table(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    parts = [seed_means(frame, [by], m) for m in METRICS if m in frame]
    table = parts[0]
    for part in parts[1:]:
        table = table.merge(part, on=["seed", by], how="outer")
    return table


def single_skips(record: SweepRecord) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs that skip one layer, that layer as `layer`; the runs that skip a set)."""
    sets = record.frame["skip"].map(json.loads)
    single = record.frame[sets.map(len) == 1].assign(layer=sets[sets.map(len) == 1].map(lambda s: s[0]))
    return single, record.frame[sets.map(len) != 1]


def skip_profile(record: SweepRecord) -> Profile:
    single, _ = single_skips(record)
    profile = as_profile(seed_means(single, ["layer"], "kl"), "layer", "kl")
    return Profile(profile, "KL of skipping the layer", peak(profile)[2], "the most harmful skip")


def _keeps_card(models: list[SweepRecord], figure: str, rows_of, metric: str, metric_text: str, what: str,
                doing: str) -> ClaimCard | None:
    """Whether any model has a layer whose `what` keeps `metric` >= KEEP with the full model (per seed: the
    largest over layers and models, against the KEEP threshold)."""
    best, where = {}, {}
    for rec in models:
        rows = rows_of(rec)
        if metric not in rows or rows[metric].isna().all():
            return None
        per_seed = seed_means(rows, ["layer"], metric)
        best[rec.model] = per_seed.groupby("seed")[metric].max()
        where[rec.model] = int(per_seed.groupby("layer")[metric].mean().idxmax())
    seeds = sorted(set.intersection(*(set(b.index) for b in best.values())))
    values = {int(s): float(max(b[s] for b in best.values())) for s in seeds}
    keeping = [m for m, b in best.items() if b.mean() >= KEEP]
    sign = 1 if keeping else -1
    ev = Evidence(values, {s: sign * (v - KEEP) > 0 for s, v in values.items()}, dict.fromkeys(values, KEEP), sign)
    top = max(best, key=lambda m: best[m].mean())
    article = "An" if what[0] in "aeiou" else "A"
    claim = (f"{article} {what} keeps {metric_text} ≥ {KEEP:g} with the full model in {', '.join(keeping)}"
             if keeping else f"No {what} keeps {metric_text} ≥ {KEEP:g} with the full model in any model")
    return card(f"{claim}: the best is {best[top].mean():.2f} ({top}, {doing} L{where[top]}).", figure,
                f"the largest {metric_text} of any {what} in any model, per seed", ev,
                f"the {KEEP:g} threshold", keeping=keeping)


def skip_scale_card(models: list[SweepRecord], figure: str) -> ClaimCard | None:
    """'No single-layer skip keeps top-5 overlap >= KEEP in any model', or the models where one does."""
    return _keeps_card(models, figure, lambda rec: single_skips(rec)[0], "top5_overlap", "top-5 overlap",
                       "single-layer skip", "skipping")


@section("skip", profile=skip_profile, scale_card=skip_scale_card)
def skip_section(record: SweepRecord) -> Section:
    single, others = single_skips(record)
    result = Section("Layer skipping")
    if len(single):
        per_seed = _seed_table(single, "layer")
        profile = as_profile(per_seed, "layer", "kl")
        worst = peak(profile)[0]
        result.figures.append(Shown(
            "skip_curves", "Skipping one layer: KL and agreement with the full model",
            f"Mean over {per_seed['seed'].nunique()} seeds of the family-mean metric when only that layer is skipped; "
            "band: ± cross-seed std; dashed: the skip that hurts most.",
            agreement_curves(long_stats(per_seed, ["layer"], METRICS), "layer", "skipped layer", worst,
                             f"worst L{worst}")))
        result.cards.append(peak_card(
            profile, record.n_layers, "Skipping L{layer} ({depth} depth) hurts most of the single-layer skips: "
            "KL {mean} ± {std}; worst skip per seed: {seeds}.", "skip_curves", "KL (family mean)",
            caveats=[_overlap_note(per_seed, worst)]))
        best = peak(profile, largest=False)[0]
        result.cards.append(peak_card(
            profile, record.n_layers, "Skipping L{layer} ({depth} depth) hurts least of the single-layer skips: "
            "KL {mean} ± {std}; mildest skip per seed: {seeds}.", "skip_curves", "KL (family mean)", largest=False,
            caveats=[_overlap_note(per_seed, best)]))
    if len(others):
        per_set = _seed_table(others, "skip")
        stats = long_stats(per_set, ["skip"], ["kl", "top5_overlap"])
        result.figures.append(Shown("skip_sets", "Skipping sets of layers",
                                    "Bars: mean over seeds of the family-mean metric; error bars: cross-seed std.",
                                    set_bars(stats, "skip")))
    return result


def _overlap_note(per_seed: pd.DataFrame, layer: int) -> str:
    rows = per_seed[per_seed["layer"] == layer]
    return (f"top-1 agreement {rows['top1_agreement'].mean():.2f}, top-5 overlap {rows['top5_overlap'].mean():.2f} "
            f"with the full model there (mean over seeds)")


def early_exit_profile(record: SweepRecord) -> Profile:
    per_seed = seed_means(record.frame, ["exit_layer"], "top1_agreement")
    profile = as_profile(per_seed, "exit_layer", "top1_agreement")
    before_last = profile[profile["layer"] < record.n_layers - 1]
    return Profile(profile, "top-1 agreement with the full model", peak(before_last)[2],
                   "the best early exit")


def exit_scale_card(models: list[SweepRecord], figure: str) -> ClaimCard | None:
    """'No early exit before the last layer keeps top-1 agreement >= KEEP in any model', or where one does."""
    def early(rec: SweepRecord) -> pd.DataFrame:
        rows = rec.frame[rec.frame["exit_layer"] < rec.n_layers - 1]
        return rows.assign(layer=rows["exit_layer"])

    return _keeps_card(models, figure, early, "top1_agreement", "top-1 agreement",
                       "early exit before the last layer", "exiting after")


@section("early_exit", profile=early_exit_profile, scale_card=exit_scale_card)
def early_exit_section(record: SweepRecord) -> Section:
    per_seed = _seed_table(record.frame, "exit_layer")
    profile = as_profile(per_seed, "exit_layer", "top1_agreement")
    before_last = profile[profile["layer"] < record.n_layers - 1]
    result = Section("Early exit (logit lens)")
    best = peak(before_last)[0] if len(before_last) else None
    result.figures.append(Shown(
        "early_exit_curves", "Early exit: KL and agreement with the full model by exit layer",
        f"Logit lens (final norm and unembedding on resid_post[L]); mean over {per_seed['seed'].nunique()} seeds of "
        "the family-mean metric, band ± cross-seed std; dashed: the best exit before the last layer.",
        agreement_curves(long_stats(per_seed.rename(columns={"exit_layer": "layer"}), ["layer"], METRICS), "layer",
                         "exit layer", best, f"best early exit L{best}" if best is not None else "")))
    if best is None:
        result.notes.append("no exit layer before the last in this sweep: no early-exit card")
        return result
    rows = per_seed[per_seed["exit_layer"] == best]
    caveats = [f"KL {rows['kl'].mean():.2f}, top-5 overlap {rows['top5_overlap'].mean():.2f} there (mean over seeds)"]
    if rows["top1_agreement"].mean() < 0.5:
        caveats.append("below 0.5: no exit before the last layer agrees with the full model on most items")
    result.cards.append(peak_card(
        before_last, record.n_layers, "The best early exit is L{layer} ({depth} depth): top-1 agreement with the full "
        "model {mean} ± {std}; best exit per seed: {seeds}.", "early_exit_curves", "top-1 agreement (family mean)",
        caveats=caveats))
    if "top5_overlap" in per_seed:
        top5 = as_profile(per_seed, "exit_layer", "top5_overlap").sort_values(["seed", "layer"])
        jumps = top5.assign(**{METRIC: top5.groupby("seed")[METRIC].diff()}).dropna()
        jumps = jumps[jumps["layer"] < record.n_layers - 1]  # the last layer is the full model by construction
        if len(jumps):
            result.cards.append(peak_card(
                jumps, record.n_layers, "Top-5 overlap with the full model jumps most at L{layer} ({depth} depth): "
                "+{mean} ± {std} over the layer before; largest jump per seed: {seeds}.", "early_exit_curves",
                "top-5 overlap gain over the previous exit layer"))
    return result
