"""Adapter and cross-model-patch reports: norm profile, norm vs effect, rank truncation, recovery by layer; cards.

The per-layer numbers are the step-indexed metrics the adapter kind logs (step = layer):
`norm_layer` (||B A||_F x scaling of the layer's modules) and `effect_layer` (KL of the
adapted model against it with the adapter off in that layer). One adapter per (seed,
family, rank, ...): per seed, numbers are averaged over the adapters of that seed first.
Controls: rank truncation is judged against keep_rank 0 (the adapter removed); a layer that
stands out against the seed's median layer. The norm/effect correlation has no control.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from adapters.kind import EFFECT_LAYER, LOCK_EFFECT, LOCK_IN_LAYER, NORM_LAYER
from orchestrator.numbers import fmt, pm
from orchestrator.report.claims import ClaimCard, Evidence, card
from orchestrator.report.figures import lines_by_layer, scatter_with_r
from orchestrator.report.hubs import METRIC
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import (
    Profile,
    Section,
    Shown,
    as_profile,
    over_seeds,
    peak,
    peak_card,
    section,
    seed_means,
)

TRUNCATION_SHARE = 0.1  # the smallest keep_rank whose KL is at most this share of removing the adapter


def layer_curve(record: SweepRecord, key: str, operation: str) -> pd.DataFrame:
    """Rows of one step-indexed metric joined to their runs' axes: seed, family, rank, layer (= step), value."""
    runs = record.frame[record.frame["operation"] == operation]
    runs = runs if "rank" in runs else runs.assign(rank="folder")  # a brought adapter has no rank axis
    curve = record.curves[record.curves["key"] == key].rename(columns={"step": "layer"})
    joined = curve.merge(runs[["run_id", "seed", "family", "rank"]], on="run_id")
    return joined[["seed", "family", "rank", "layer", "value"]]


def _norms(record: SweepRecord) -> pd.DataFrame:
    found = layer_curve(record, NORM_LAYER, "norm_profile")
    return found if len(found) else layer_curve(record, NORM_LAYER, "norm_effect")


def adapter_profile(record: SweepRecord) -> Profile:
    effect = layer_curve(record, EFFECT_LAYER, "norm_effect")
    profile = as_profile(seed_means(effect, ["layer"], "value"), "layer", "value")
    return Profile(profile, "KL with the adapter off in the layer", peak(profile)[2], "the peak adapter-effect layer")


@section("adapter", profile=adapter_profile)
def adapter_section(record: SweepRecord) -> Section:
    result = Section("Adapters")
    norms, effect = _norms(record), layer_curve(record, EFFECT_LAYER, "norm_effect")
    panels = ((norms, "adapter_norms", "Adapter norm profile by layer", "||B A||_F x scaling"),
              (effect, "adapter_effects", "Adapter effect by layer (adapter off in one layer)",
               "KL(adapter || layer off)"))
    for frame, fig_id, title, ylabel in panels:
        if len(frame):
            stats = over_seeds(seed_means(frame, ["family", "rank", "layer"], "value"), ["family", "rank", "layer"],
                               "value")
            result.figures.append(Shown(fig_id, title, "One panel per family, one line per LoRA rank: mean over seeds; "
                                        "band ± cross-seed std.", lines_by_layer(stats, "family", "rank", ylabel)))
            profile = as_profile(seed_means(frame, ["layer"], "value"), "layer", "value")
            what = "norm" if fig_id == "adapter_norms" else "effect (KL with the adapter off in that layer)"
            claim = (f"The adapter's per-layer {what} peaks at L{{layer}} ({{depth}} depth): {{mean}} ± {{std}}; "
                     "peak per seed: {seeds}.")
            result.cards.append(peak_card(profile, record.n_layers, claim, fig_id, ylabel))
    if len(effect) and len(norms):
        result.figures.append(_scatter(record, result))
    result.figures += _truncation(record, result)
    result.notes += _compat_notes(record)
    result.figures += _lock_in(record, result)
    return result


def _lock_in(record: SweepRecord, result: Section) -> list[Shown]:
    """lock_in runs: the surgery profile at each checkpoint (one line per step) and the lock-in step of each layer."""
    keys = sorted({k for k in record.curves["key"].unique() if str(k).startswith(LOCK_EFFECT)}) \
        if len(record.curves) else []
    parts = [layer_curve(record, key, "lock_in").assign(step=int(key.removeprefix(LOCK_EFFECT))) for key in keys]
    parts = [p for p in parts if len(p)]
    if not parts:
        return []
    profiles = pd.concat(parts, ignore_index=True)
    stats = over_seeds(seed_means(profiles, ["family", "step", "layer"], "value"), ["family", "step", "layer"],
                       "value")
    locked = layer_curve(record, LOCK_IN_LAYER, "lock_in")
    for family, part in locked.groupby("family"):
        per_layer = over_seeds(seed_means(part, ["layer"], "value"), ["layer"], "value")
        runs = record.frame[(record.frame["operation"] == "lock_in") & (record.frame["family"] == family)]
        top = runs.groupby("seed")["lock_in_top3"].mean() if "lock_in_top3" in runs else pd.Series(dtype=float)
        result.notes.append(
            f"lock-in ({family}): the final top-3 layers lock in by step {pm(top.mean(), top.std(ddof=1))} "
            f"over {len(top)} seed(s); per layer: "
            + ", ".join(f"L{int(r['layer'])} {pm(r['mean'], r['std'])}" for _, r in per_layer.iterrows()))
    return [Shown("adapter_lock_in", "Adapter surgery profile over training checkpoints",
                  "One panel per family, one line per checkpoint step: KL of dropping one layer's LoRA against the "
                  "full adapter at that checkpoint, mean over seeds (band ± cross-seed std). A layer locks in at the "
                  "first checkpoint from which its rank stays within ±1 of its final rank.",
                  lines_by_layer(stats, "family", "step", "KL(adapter || layer off)"))]


def _scatter(record: SweepRecord, result: Section) -> Shown:
    effect = layer_curve(record, EFFECT_LAYER, "norm_effect")
    norm = layer_curve(record, NORM_LAYER, "norm_effect")
    points = effect.merge(norm, on=["seed", "family", "rank", "layer"], suffixes=("_effect", "_norm"))
    r = float(np.corrcoef(points["value_norm"], points["value_effect"])[0, 1]) if len(points) > 1 else float("nan")
    runs = record.frame[(record.frame["operation"] == "norm_effect")].dropna(subset=["pearson"])
    per_seed = runs.groupby("seed")["pearson"].mean()
    pearson = runs["pearson"]
    note = f"per adapter: {pearson.mean():.2f} ± {fmt(pearson.std(ddof=1), '.2g')} over {len(runs)} adapters"
    sign = 1 if per_seed.mean() >= 0 else -1
    ev = Evidence({int(s): float(v) for s, v in per_seed.items()}, {int(s): sign * v > 0 for s, v in per_seed.items()},
                  None, sign)
    result.cards.append(card(
        f"Per-layer adapter norm and per-layer effect correlate {'positively' if sign > 0 else 'negatively'}: "
        f"Pearson r "
        f"{per_seed.mean():.2f} ± {fmt(per_seed.std(ddof=1), '.2g')} (per seed, the mean over its "
        f"{len(runs) // max(len(per_seed), 1)} "
        f"adapters; all points pooled: r = {r:.2f}).", "adapter_norm_effect", "Pearson r (seed mean)", ev,
        caveats=["no control for a correlation: at best B"]))
    return Shown("adapter_norm_effect", "Adapter norm vs effect per layer",
                 "Each point is one layer of one adapter: its norm against the KL of switching it off there.",
                 scatter_with_r(points, "value_norm", "value_effect", "family", r, note, "||B A||_F x scaling",
                                "KL(adapter || layer off)", "norm vs effect by layer"))


def _truncation(record: SweepRecord, result: Section) -> list[Shown]:
    if not {"kl", "keep_rank"} <= set(record.frame):
        return []
    rows = record.frame[record.frame["operation"] == "rank_truncation"].dropna(subset=["kl", "keep_rank"])
    if rows.empty:
        return []
    rows = rows.assign(keep_rank=rows["keep_rank"].astype(int))
    stats = over_seeds(seed_means(rows, ["family", "rank", "keep_rank"], "kl"), ["family", "rank", "keep_rank"], "kl")
    top = int(rows["rank"].max())
    per_seed = seed_means(rows[rows["rank"] == top], ["keep_rank"], "kl")
    pivot = per_seed.pivot(index="seed", columns="keep_rank", values="kl")
    if 0 in pivot and len(pivot.columns) > 1:
        result.cards.append(_truncation_card(pivot, top))
    return [Shown("adapter_truncation", "Rank truncation: KL against the full adapter",
                  "One panel per family, one line per LoRA rank: KL(full adapter || truncated) by the rank kept; "
                  "keep_rank 0 is the adapter removed (the control).",
                  lines_by_layer(stats, "family", "rank", "KL(full || truncated)", x="keep_rank",
                                 xlabel="rank kept (keep_rank)"))]


def _truncation_card(pivot: pd.DataFrame, top: int) -> ClaimCard:
    control = pivot[0]
    kept = [k for k in pivot.columns if 0 < k < top] or [k for k in pivot.columns if k > 0]
    small = [k for k in kept if pivot[k].mean() <= TRUNCATION_SHARE * control.mean()]
    keep = small[0] if small else max(kept)
    values = pivot[keep]
    ev = Evidence({int(s): float(v) for s, v in values.items()},
                  {int(s): bool(values[s] < control[s]) for s in values.index},
                  {int(s): float(v) for s, v in control.items()}, -1)
    return card(f"Rank-{top} adapters cut to rank {keep} stay close to the full adapter: KL {fmt(values.mean())} ± "
                f"{fmt(values.std(ddof=1), '.2g')}, against {fmt(control.mean())} for removing the adapter "
                "(keep_rank 0).",
                "adapter_truncation", "KL(full || truncated), family mean", ev, "the adapter removed (keep_rank 0)",
                [f"{'smallest keep_rank' if small else 'largest keep_rank below the rank'}"
                 f"{f' with at most {TRUNCATION_SHARE:.0%} of the control KL' if small else ''}"])


def _compat_notes(record: SweepRecord) -> list[str]:
    if not {"compatible", "target_model"} <= set(record.frame):
        return []
    rows = record.frame[record.frame["operation"] == "compat"].dropna(subset=["compatible"])
    return [f"compat on {target}: fits for {int(part['compatible'].sum())} of {len(part)} adapters"
            for target, part in rows.groupby("target_model")]


def cross_model_profile(record: SweepRecord) -> Profile:
    profile = as_profile(seed_means(record.frame, ["layer"], "recovery"), "layer", "recovery")
    jumps = _jumps(profile)
    return Profile(profile, "recovery", peak(jumps)[2] if len(jumps) else pd.Series(dtype=int),
                   "the largest recovery jump")


def _jumps(profile: pd.DataFrame) -> pd.DataFrame:
    ordered = profile.sort_values(["seed", "layer"])
    return ordered.assign(**{METRIC: ordered.groupby("seed")[METRIC].diff()}).dropna()


@section("cross_model_patch", profile=cross_model_profile)
def cross_model_section(record: SweepRecord) -> Section:
    ranks = record.frame["rank"].astype(str) if "rank" in record.frame else "folder"
    frame = record.frame.assign(panel="rank " + ranks)
    stats = over_seeds(seed_means(frame, ["panel", "family", "layer"], "recovery"), ["panel", "family", "layer"],
                       "recovery")
    result = Section("Cross-model patching", [Shown(
        "cross_model_recovery", "Recovery by layer: the trained model's resid_post[L] in the base run",
        "recovery = (LD_patched - LD_base) / (LD_trained - LD_base); one line per family, mean over seeds, band ± "
        "cross-seed std; one panel per LoRA rank.", lines_by_layer(stats, "panel", "family", "recovery"))])
    jumps = _jumps(as_profile(seed_means(frame, ["layer"], "recovery"), "layer", "recovery"))
    if len(jumps):
        gap = record.frame["ld_gap"].abs().mean() if "ld_gap" in record.frame else float("nan")
        result.cards.append(peak_card(
            jumps, record.n_layers, "Recovery jumps most when patching at L{layer} ({depth} depth): +{mean} ± {std} "
            "over the layer before; largest jump per seed: {seeds}.", "cross_model_recovery",
            "recovery gain over the previous layer", caveats=[f"mean |LD_trained - LD_base| = {gap:.2f}: a small gap "
                                                              "makes recovery noisy"]))
    return result
