"""The steering report: layer x strength heatmaps of ld_delta per vector type beside the random control, and cards.

Cards, per non-random vector type: the strongest boost (a positive strength) and the
strongest knock-out (a negative strength), each chosen as the cell whose cross-seed mean
ld_delta is furthest from the random vector's at the same layer and strength in the
intended direction. Evidence per seed: the family-mean ld_delta at that cell (x_s) against
the random vector's there (c_s); a seed agrees if its x_s - c_s has the intended sign.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.numbers import fmt
from orchestrator.report.claims import ClaimCard, Evidence, card
from orchestrator.report.figures import steering_heatmaps
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import Profile, Section, Shown, as_profile, over_seeds, peak, section, seed_means

CONTROL = "random"
AXES = ["layer", "strength", "vector_type"]


def steering_profile(record: SweepRecord) -> Profile:
    """Per seed and layer: the largest |ld_delta - random's ld_delta| over strengths and vector types."""
    per_seed = seed_means(record.frame, AXES, "ld_delta")
    gap = _minus_control(per_seed)
    best = gap.assign(effect=gap["gap"].abs()).groupby(["seed", "layer"], as_index=False)["effect"].max()
    profile = as_profile(best.rename(columns={"effect": "value"}), "layer", "value")
    return Profile(profile, "max |ld_delta - random| over strengths", peak(profile)[2],
                   "the most steerable layer")


def _minus_control(per_seed: pd.DataFrame) -> pd.DataFrame:
    control = per_seed[per_seed["vector_type"] == CONTROL].rename(columns={"ld_delta": "control"})
    rows = per_seed[per_seed["vector_type"] != CONTROL]
    if control.empty:
        return rows.assign(control=np.nan, gap=rows["ld_delta"])
    rows = rows.merge(control.drop(columns="vector_type"), on=["seed", "layer", "strength"], how="left")
    return rows.assign(gap=rows["ld_delta"] - rows["control"])


@section("steering", profile=steering_profile)
def steering_section(record: SweepRecord) -> Section:
    per_seed = seed_means(record.frame, AXES, "ld_delta")
    cells = over_seeds(per_seed, AXES, "ld_delta")
    families = sorted(record.frame["family"].unique())
    shown = Shown("steering_heatmap", "Steering: mean ld_delta by layer and strength",
                  f"Cells: mean over {per_seed['seed'].nunique()} seeds of the family-mean ld_delta "
                  f"(LD steered - LD clean; families: {', '.join(families)}), with the cross-seed std (ddof=1) "
                  "below. The random vector (the control) is the last panel; one colour scale for all panels.",
                  steering_heatmaps(cells, CONTROL))
    result = Section("Steering", [shown])
    if CONTROL not in set(per_seed["vector_type"]):
        result.notes.append("no random vector in this sweep: steering cards have no control and are at best B")
    for vtype in sorted(set(per_seed["vector_type"]) - {CONTROL}):
        for direction in (1, -1):
            made = _cell_card(record, per_seed, vtype, direction, result.notes)
            if made:
                result.cards.append(made)
    return result


def _cell_card(record: SweepRecord, per_seed: pd.DataFrame, vtype: str, direction: int,
               notes: list[str]) -> ClaimCard | None:
    gap = _minus_control(per_seed[per_seed["vector_type"].isin([vtype, CONTROL])])
    gap = gap[np.sign(gap["strength"]) == direction]
    if gap.empty:
        return None
    means = gap.groupby(["layer", "strength"])[["ld_delta", "gap"]].mean()
    eligible = means[np.sign(means["ld_delta"]) == direction]  # a boost must raise LD, a knock-out lower it
    if eligible.empty:
        notes.append(f"{vtype}: no {'positive' if direction > 0 else 'negative'}-strength cell "
                     f"{'raises' if direction > 0 else 'lowers'} the logit difference on average (no card)")
        return None
    score = direction * (eligible["gap"] if eligible["gap"].notna().any() else eligible["ld_delta"])
    layer, strength = score.idxmax()
    rows = gap[(gap["layer"] == layer) & (gap["strength"] == strength)]
    has_control = rows["control"].notna().all()
    ref = rows["gap"] if has_control else rows["ld_delta"]
    ev = Evidence(dict(zip(rows["seed"].astype(int), rows["ld_delta"].astype(float))),
                  dict(zip(rows["seed"].astype(int), (direction * ref > 0).tolist())),
                  dict(zip(rows["seed"].astype(int), rows["control"].astype(float))) if has_control else None,
                  direction)
    verb = "raises" if direction > 0 else "lowers"
    x, c = rows["ld_delta"], rows["control"]
    claim = (f"{vtype} steering at L{layer} ({layer / record.n_layers:.0%} depth), strength {strength:+g}, {verb} "
             f"the target's logit difference: ld_delta {x.mean():+.2f} ± {fmt(x.std(ddof=1), '.2f')}")
    claim += (f" vs {c.mean():+.2f} ± {fmt(c.std(ddof=1), '.2f')} for the random vector" if has_control else "") + "."
    caveats = [f"chosen as the {'boost' if direction > 0 else 'knock-out'} cell furthest from the random vector "
               f"among {len(means)} (layer, strength) cells of {vtype}; the selection favours a large effect"]
    caveats += _cell_notes(record, vtype, layer, strength)
    return card(claim, "steering_heatmap", "ld_delta (family mean per seed)", ev,
                "random vector at the same layer and strength", caveats, layer=layer, strength=strength)


def _cell_notes(record: SweepRecord, vtype: str, layer: int, strength: float) -> list[str]:
    frame = record.frame
    rows = frame[(frame["vector_type"] == vtype) & (frame["layer"] == layer) & (frame["strength"] == strength)]
    notes = []
    if "accuracy_clean" in rows and rows["accuracy_clean"].mean() < 0.5:
        notes.append(f"the model gets only {rows['accuracy_clean'].mean():.0%} of these eval items right unsteered")
    if "kl" in rows:
        notes.append(f"KL(clean || steered) there: {rows['kl'].mean():.2f} (mean over runs)")
    if "selectivity" in rows and rows["selectivity"].notna().any():
        notes.append(f"selectivity (own / collateral log-prob drop): {rows['selectivity'].mean():.2f}")
    return notes
