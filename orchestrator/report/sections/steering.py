"""The steering report: heatmaps beside the random control and the prompting baseline, the vectors' geometry,
per-item reliability, generation metrics, and held-out claim cards.

Cards (the grading and held-out rules are in claims.py): per non-random vector type, the
strongest boost (positive strength) and knock-out (negative strength): among the (layer,
strength) cells whose family-mean ld_delta, on the selection half of the eval items, is in the
claimed direction and beyond the random vector's whole range over seeds at the same cell, the
one with the largest own effect. Evidence per seed: that cell's family-mean ld_delta on the reporting half (x_s)
against the random vector's there (c_s); a seed agrees if x_s - c_s has the claimed sign. Per
family, the best boost cell of any vector type against the k-shot prompting baseline.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from orchestrator.numbers import fmt
from orchestrator.report.across import compare_picks
from orchestrator.report.claims import SELECTIVE_A, ClaimCard, Evidence, card, grade
from orchestrator.report.figures import new_figure
from orchestrator.report.hubs import Summary, in_order, moves_table, ordered_values
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import Profile, Section, Shown, as_profile, over_seeds, peak, section, seed_means
from orchestrator.report.steering_figures import generation_lines, geometry, item_shifts, steering_heatmaps

CONTROL, PROMPT = "random", "prompt"
AXES = ["layer", "strength", "vector_type"]
HALVES = ("ld_delta_select", "ld_delta_report")
GENERATION = ("target_hit_rate", "fluency_nll", "repetition", "neutral_kl")
STRONGEST = 3  # cells whose per-item shifts the report draws


def layer_tuple(value) -> tuple[int, ...]:
    """A logged `layer` (an int, or a layer set's JSON text) as the layers it steered."""
    if isinstance(value, str):
        parsed = json.loads(value)
        return tuple(parsed) if isinstance(parsed, list) else (int(parsed),)
    return (int(value),)


def layer_label(layers: tuple[int, ...]) -> str:
    return "+".join(map(str, layers))


def layer_value(label: str) -> int | list[int]:
    """A row label back to the `layer` value a spec writes: 14, or [6, 21] for a set."""
    layers = [int(x) for x in label.split("+")]
    return layers[0] if len(layers) == 1 else layers


def split_frame(record: SweepRecord) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(steering runs with `layer` as a row label, prompting-baseline runs, the row labels in depth order; sets
    after single layers)."""
    frame = record.frame
    prompt = frame[frame["vector_type"] == PROMPT]
    steer = frame[frame["vector_type"] != PROMPT].copy()
    layers = steer["layer"].map(layer_tuple)
    steer["layer"] = layers.map(layer_label)
    order = sorted(set(layers), key=lambda t: (len(t) > 1, sum(t) / len(t), t))
    return steer, prompt, [layer_label(t) for t in order]


def steering_profile(record: SweepRecord) -> Profile:
    """Per seed and (single) layer: the largest |ld_delta - random's ld_delta| over strengths and vector types."""
    steer, _, _ = split_frame(record)
    steer = steer[~steer["layer"].str.contains(r"\+")].assign(layer=lambda f: f["layer"].astype(int))
    gap = _minus_control(seed_means(steer, AXES, "ld_delta"), "ld_delta")
    best = gap.assign(effect=gap["gap"].abs()).groupby(["seed", "layer"], as_index=False)["effect"].max()
    profile = as_profile(best.rename(columns={"effect": "value"}), "layer", "value")
    return Profile(profile, "max |ld_delta - random| over strengths", peak(profile)[2], "the most steerable layer")


def _minus_control(per_seed: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Non-control rows with the random vector's value at the same seed, layer and strength (`control`), `gap`."""
    control = per_seed[per_seed["vector_type"] == CONTROL].rename(columns={metric: "control"})
    rows = per_seed[per_seed["vector_type"] != CONTROL]
    if control.empty:
        return rows.assign(control=np.nan, gap=rows[metric])
    rows = rows.merge(control.drop(columns="vector_type"), on=["seed", "layer", "strength"], how="left")
    return rows.assign(gap=rows[metric] - rows["control"])


def pick_cell(selection: pd.DataFrame, vtypes: list[str], direction: int) -> tuple[str, str, float] | None:
    """The cell a card claims, chosen on one half of the items only: (vector_type, layer, strength) with the largest
    direction * mean over seeds, among cells whose mean has the claimed sign and beats the random vector at the same
    layer and strength: lies beyond its whole range over seeds (the grading rule's test; no test without a random
    vector). selection: seed, layer, strength, vector_type, value."""
    rows = selection[np.sign(selection["strength"]) == direction].assign(signed=lambda f: direction * f["value"])
    means = rows.groupby(AXES, as_index=False)["signed"].mean()
    control = rows[rows["vector_type"] == CONTROL].groupby(["layer", "strength"], as_index=False)["signed"].max()
    mine = means[means["vector_type"].isin(vtypes)].merge(control.rename(columns={"signed": "ceiling"}),
                                                          on=["layer", "strength"], how="left")
    eligible = mine[(mine["signed"] > 0) & ~(mine["signed"] <= mine["ceiling"])]
    if eligible.empty:
        return None
    best = eligible.loc[eligible["signed"].idxmax()]
    return best["vector_type"], best["layer"], float(best["strength"])


def _values(per_seed: pd.DataFrame, vtype: str, layer: str, strength: float, metric: str) -> dict[int, float]:
    rows = per_seed[(per_seed["vector_type"] == vtype) & (per_seed["layer"] == layer)
                    & (per_seed["strength"] == strength)].dropna(subset=[metric])
    return dict(zip(rows["seed"].astype(int), rows[metric].astype(float)))


def cell_evidence(per_seed: pd.DataFrame, vtype: str, layer: str, strength: float, direction: int, metric: str,
                  selectivity: float | None = None) -> Evidence:
    """x_s: the cell's family mean per seed; c_s: the random vector's at the same cell (if every seed has it)."""
    x = _values(per_seed, vtype, layer, strength, metric)
    c = _values(per_seed, CONTROL, layer, strength, metric)
    control = {s: c[s] for s in x} if x and all(s in c for s in x) else None
    agree = {s: direction * (v - (control[s] if control else 0.0)) > 0 for s, v in x.items()}
    return Evidence(x, agree, control, direction, selectivity)


class Halves:
    """Which metric columns a card selects on and reports on (the halves, or all items for older sweeps)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.split = all(h in frame and frame[h].notna().any() for h in HALVES)
        self.select, self.report = HALVES if self.split else ("ld_delta", "ld_delta")


def best_cells_across(axis: str):
    """What compares the best steering cell across the values of `axis` (precisions): per value and family, the
    (vector type, layer, strength) cell with the largest |ld_delta - random's| (strongest_cells), and whether it
    moves from the first value's (table best_cell_by_<axis>; metric best_cell_stable_across_<axis>: the share of
    families whose cell stays)."""

    def across(frame: pd.DataFrame) -> Summary:
        steer = _steered(frame)
        cells: dict[str, dict[str, str]] = {}
        for value in dict.fromkeys(steer[axis].astype(str)):
            for family, own in steer[steer[axis].astype(str) == value].groupby("family", sort=False):
                best = strongest_cells(own, 1)
                if best:
                    cells.setdefault(value, {})[str(family)] = cell_label(*best[0])
        if len(cells) < 2:
            return Summary({}, {})
        table, view = moves_table(axis, cells, "best_cell")
        reference = next(iter(cells.values()))
        stays = [all(c.get(f) == cell for c in cells.values()) for f, cell in reference.items()]
        return Summary({f"best_cell_by_{axis}": table}, {f"best_cell_stable_across_{axis}": sum(stays) / len(stays)},
                       [view])

    return across


HOLDS = 0.5  # steering holds across lengths when the longest bucket keeps at least this share of the first's gain


def steering_across_lengths(frame: pd.DataFrame) -> Summary:
    """Per family and length bucket (in the sweep's order): the strongest cell's gain over the random vector
    (strongest_cells: the largest |ld_delta - random's|, signed here) and the prompting baseline's ld_delta; 'steering
    holds across lengths' when the last bucket's |gain| is at least HOLDS x the first's, else 'steering degrades with
    length' (table steering_across_lengths; metric steering_holds_across_lengths: the share of families it holds
    for)."""
    steer, prompt = _steered(frame), frame[frame["vector_type"] == PROMPT]
    rows = []
    for family, own in steer.groupby("family", sort=False):
        gains, cells, baselines = {}, {}, {}
        for bucket, part in own.groupby("length", sort=False):
            size = cell_gains(part)
            if size.empty:
                continue
            layer, strength, vtype = best = size.abs().idxmax()
            gains[str(bucket)], cells[str(bucket)] = float(size[best]), cell_label(vtype, layer, strength)
            shots = prompt[(prompt["family"] == family) & (prompt["length"] == bucket)]["ld_delta"].dropna()
            baselines[str(bucket)] = float(shots.mean()) if len(shots) else float("nan")
        if len(gains) < 2:
            continue
        first, last = next(iter(gains.values())), list(gains.values())[-1]
        holds = abs(last) >= HOLDS * abs(first)
        rows.append({"family": family, "gain_per_length": ", ".join(f"{b}:{g:+.2f}" for b, g in gains.items()),
                     "cell_per_length": ", ".join(f"{b}:{c}" for b, c in cells.items()),
                     "prompting_per_length": ", ".join(f"{b}:{fmt(v, '+.2f')}" for b, v in baselines.items()),
                     "verdict": "steering holds across lengths" if holds else "steering degrades with length",
                     "holds": holds})
    table = pd.DataFrame(rows, columns=["family", "gain_per_length", "cell_per_length", "prompting_per_length",
                                        "verdict", "holds"])
    if table.empty:
        return Summary({}, {})
    view = Table(title="steering per family across prompt lengths: the strongest cell's gain over random, the "
                       "prompting baseline", title_justify="left")
    for name in ("family", "gain per length", "cell per length", "prompting per length", "verdict"):
        view.add_column(name)
    for _, r in table.iterrows():
        view.add_row(str(r["family"]), r["gain_per_length"], escape(r["cell_per_length"]), r["prompting_per_length"],
                     r["verdict"])
    return Summary({"steering_across_lengths": table},
                   {"steering_holds_across_lengths": float(table["holds"].mean())}, [view])


def cell_picks(frame: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Each seed's strongest cell (strongest_cells) per family and value of `axis`: family, value, seed, pick."""
    steer, rows = in_order(_steered(frame), axis), []
    for (family, value), part in steer.groupby(["family", steer[axis].astype(str)], sort=False):
        for seed, mine in part.groupby("seed"):
            best = strongest_cells(mine, 1)
            if best:
                rows.append({"family": family, "value": value, "seed": int(seed), "pick": cell_label(*best[0])})
    return pd.DataFrame(rows, columns=["family", "value", "seed", "pick"])


def _seed_gaps(part: pd.DataFrame) -> pd.DataFrame:
    """Per seed and cell: ld_delta - random's at the same seed, layer and strength (`gap`)."""
    return _minus_control(seed_means(part, AXES, "ld_delta"), "ld_delta")


def lengths_compare(frame: pd.DataFrame) -> Section:
    """Per family: "steering holds across lengths / degrades with length" (across.py's rule: the strongest cell
    per bucket, each seed's gain over random there, the last bucket's kept share of the first's against HOLDS),
    and each seed's strongest cell per bucket; figures of both."""
    steer, prompt = _steered(frame), frame[frame["vector_type"] == PROMPT]
    result = compare_picks("length", "strongest cell", cell_picks, numeric=False)(frame)
    families = list(dict.fromkeys(steer["family"]))
    fig, axes = new_figure(len(families), cols=min(3, len(families)), size=(3.8, 3.0))
    for ax, family in zip(axes, families):
        own = steer[steer["family"] == family]
        buckets = ordered_values(own, "length")
        gains: dict[str, dict[int, float]] = {}
        for i, bucket in enumerate(buckets):
            part = own[own["length"].astype(str) == bucket]
            size = cell_gains(part)
            if size.empty:
                continue
            layer, strength, vtype = size.abs().idxmax()
            gaps = _seed_gaps(part)
            cell = gaps[(gaps["layer"] == layer) & (gaps["strength"] == strength) & (gaps["vector_type"] == vtype)]
            gains[bucket] = dict(zip(cell["seed"].astype(int), cell["gap"].astype(float)))
            ax.bar(i, float(size[(layer, strength, vtype)]), color="#8ab", label="strongest cell" if i == 0 else None)
            ax.scatter([i] * len(cell), cell["gap"], color="k", s=12, zorder=3)
            shots = prompt[(prompt["family"] == family) & (prompt["length"].astype(str) == bucket)]["ld_delta"]
            if shots.notna().any():
                ax.scatter([i], [shots.mean()], marker="x", color="#c33", s=40, zorder=3,
                           label="prompting" if i == 0 else None)
        ax.set_xticks(range(len(buckets)), buckets)
        ax.axhline(0, color="#999", lw=0.8)
        ax.set_title(family)
        ax.set_ylabel("gain over random (ld_delta)")
        if len(gains) < 2:
            continue
        first, last = gains[next(iter(gains))], gains[list(gains)[-1]]
        kept = {s: abs(last[s]) / abs(first[s]) - HOLDS if first[s] else float("nan") for s in first if s in last}
        kept = {s: x for s, x in kept.items() if np.isfinite(x)}
        pooled = [(b, float(np.mean(list(g.values())))) for b, g in gains.items()]
        holds = abs(pooled[-1][1]) >= HOLDS * abs(pooled[0][1])
        verdict = "steering holds across lengths" if holds else "steering degrades with length"
        result.cards.append(card(
            f"{family}: {verdict} (gain over random " + ", ".join(f"{b} {g:+.2f}" for b, g in pooled) + ")",
            "steering_gain_by_length", f"share of the {pooled[0][0]} gain kept at {pooled[-1][0]}, minus {HOLDS}",
            Evidence(kept, {s: (x >= 0) == holds for s, x in kept.items()}, None, 1 if holds else -1),
            caveats=["the strongest cell is chosen per bucket on all eval items (no held-out half here)"]))
    axes[0].legend(fontsize=7)
    result.figures.append(Shown("steering_gain_by_length", "steering's strongest cell per prompt length",
                                "Bars: the strongest cell's gain over the random vector (mean over seeds); dots: each "
                                "seed; x: the k-shot prompting baseline's ld_delta in the same bucket.", fig))
    return result


@section("steering", profile=steering_profile,
         across={"precision": best_cells_across("precision"), "length": steering_across_lengths},
         compare={"precision": compare_picks("precision", "strongest cell", cell_picks, numeric=False),
                  "length": lengths_compare})
def steering_section(record: SweepRecord) -> Section:
    steer, prompt, rows = split_frame(record)
    result = Section("Steering")
    per_seed = seed_means(steer, AXES, "ld_delta")
    baseline = _baseline(prompt, "ld_delta")
    shots = int(prompt["shots"].dropna().iloc[0]) if "shots" in prompt and prompt["shots"].notna().any() else None
    families = sorted(record.frame["family"].unique())
    caption = (f"Cells: mean over {per_seed['seed'].nunique()} seeds of the family-mean ld_delta (LD steered - LD "
               f"clean; families: {', '.join(families)}), with the cross-seed std (ddof=1) below. The random vector "
               "(the control) is the last panel; one colour scale for all panels. Rows with '+' steer a set of "
               "layers at once.")
    if baseline is not None:
        caption += (f" The column beside each panel and the line on the colour bar: {shots}-shot prompting "
                    f"(ld_delta = k-shot LD - zero-shot LD, the same scale): {baseline:+.2f}.")
    result.figures.append(Shown("steering_heatmap", "Steering: mean ld_delta by layer and strength", caption,
                                steering_heatmaps(over_seeds(per_seed, AXES, "ld_delta"), rows, CONTROL, baseline,
                                                  f"{shots}-shot")))
    if CONTROL not in set(per_seed["vector_type"]):
        result.notes.append("no random vector in this sweep: steering cards have no control and are at best B")
    _geometry(steer, result)
    _reliability(record, steer, result)
    _generation(steer, result)
    halves = Halves(record.frame)
    if not halves.split:
        result.notes.append("this sweep has no held-out halves (logged before they existed): cards choose and grade "
                            "their cell on the same items")
    vtypes = sorted(set(per_seed["vector_type"]) - {CONTROL})
    for vtype in vtypes:
        for direction in (1, -1):
            made = _cell_card(record, steer, halves, vtype, direction, result.notes)
            if made:
                result.cards.append(made)
    for family in families if not prompt.empty else ():
        made = _prompt_card(record, steer, prompt, halves, family, vtypes, shots)
        if made:
            result.cards.append(made)
        else:
            result.notes.append(f"{family}: no steering cell raises the logit difference beyond the random vector "
                                f"on the selection half, so none is compared with {shots}-shot prompting")
    return result


def _baseline(prompt: pd.DataFrame, metric: str) -> float | None:
    if prompt.empty or metric not in prompt or prompt[metric].isna().all():
        return None
    return float(prompt.groupby("seed")[metric].mean().mean())  # family mean per seed, then over seeds


def _selection(steer: pd.DataFrame, metric: str) -> pd.DataFrame:
    return seed_means(steer, AXES, metric).rename(columns={metric: "value"})


def _cell_card(record: SweepRecord, steer: pd.DataFrame, halves: Halves, vtype: str, direction: int,
               notes: list[str]) -> ClaimCard | None:
    picked = pick_cell(_selection(steer, halves.select), [vtype], direction)
    verb, kind = ("raises", "boost") if direction > 0 else ("lowers", "knock-out")
    if picked is None:
        notes.append(f"{vtype}: no {'positive' if direction > 0 else 'negative'}-strength cell {verb} the logit "
                     "difference beyond the random vector at the same cell on the selection half (no card)")
        return None
    _, layer, strength = picked
    selectivity = _cell_mean(steer, vtype, layer, strength, "selectivity") if direction < 0 else None
    per_report = seed_means(steer, AXES, halves.report)
    ev = cell_evidence(per_report, vtype, layer, strength, direction, halves.report, selectivity)
    x, c = list(ev.values.values()), list((ev.control or {}).values())
    chosen = _cell_mean(steer, vtype, layer, strength, halves.select)
    claim = (f"{vtype} steering at {_where(record, layer)}, strength {strength:+g}, {verb} the target's logit "
             f"difference: ld_delta {np.mean(x):+.2f} ± {fmt(_std(x), '.2f')}"
             + (" on held-out items" if halves.split else ""))
    claim += (f" vs {np.mean(c):+.2f} ± {fmt(_std(c), '.2f')} for the random vector" if c else "")
    claim += f" ({chosen:+.2f} on the half it was chosen on)." if halves.split else "."
    caveats = [f"chosen as the {kind} with the largest own effect among the {vtype} cells beyond the random vector's "
               "range at the same layer and strength, on the selection half of the items; numbers and grade on the "
               "other half"
               if halves.split else f"chosen as the {kind} cell with the largest own effect among the {vtype} cells "
               "beyond the random vector; chosen and graded on the same items, which favours a large effect"]
    caveats += [_before(steer, vtype, direction, record)] if halves.split else []
    if direction < 0 and not selectivity >= SELECTIVE_A:
        caveats.insert(0, "not selective: " + (f"selectivity {selectivity:.2f} (the other families drop almost as "
                                                 "much)" if not np.isnan(selectivity) else "selectivity not measured"))
    caveats += _cell_notes(steer, vtype, layer, strength)
    return card(claim, "steering_heatmap", f"{halves.report} (family mean per seed)", ev,
                "random vector at the same layer and strength", caveats, layer=layer_value(layer), strength=strength,
                selection_effect=chosen, selectivity=selectivity)


def _before(steer: pd.DataFrame, vtype: str, direction: int, record: SweepRecord) -> str:
    """The cell and grade that choosing and grading on all items would give (what cards did before the halves)."""
    picked = pick_cell(_selection(steer, "ld_delta"), [vtype], direction)
    if picked is None:
        return "chosen and graded on all items instead: no cell qualifies"
    _, layer, strength = picked
    sel = _cell_mean(steer, vtype, layer, strength, "selectivity") if direction < 0 else None
    letter, _ = grade(cell_evidence(seed_means(steer, AXES, "ld_delta"), vtype, layer, strength, direction,
                                    "ld_delta", sel))
    return f"chosen and graded on all items instead: {_where(record, layer)}, strength {strength:+g}, grade {letter}"


def _prompt_card(record: SweepRecord, steer: pd.DataFrame, prompt: pd.DataFrame, halves: Halves, family: str,
                 vtypes: list[str], shots: int | None) -> ClaimCard | None:
    """On one family: the best boost cell of any vector type (chosen on the selection half) vs k-shot prompting."""
    mine, theirs = steer[steer["family"] == family], prompt[prompt["family"] == family]
    if theirs.empty or not vtypes:
        return None
    picked = pick_cell(_selection(mine, halves.select), vtypes, 1)
    if picked is None:
        return None
    vtype, layer, strength = picked
    prompt_select = theirs.groupby("seed")[halves.select].mean()
    ahead = _cell_mean(mine, vtype, layer, strength, halves.select) > prompt_select.mean()  # decided on selection
    steering = _values(seed_means(mine, AXES, halves.report), vtype, layer, strength, halves.report)
    prompting = {int(s): float(v) for s, v in theirs.groupby("seed")[halves.report].mean().items()}
    seeds = [s for s in steering if s in prompting]
    x, c = ({s: steering[s] for s in seeds}, {s: prompting[s] for s in seeds})
    if not ahead:
        x, c = c, x
    ev = Evidence(x, {s: x[s] > c[s] for s in seeds}, c, 1)
    cell = f"{vtype} at {_where(record, layer)}, strength {strength:+g}"
    k = f"{shots}-shot prompting"
    mean_steering, mean_prompting = np.mean([steering[s] for s in seeds]), np.mean([prompting[s] for s in seeds])
    numbers = (f"ld_delta {mean_steering:+.2f} for steering vs {mean_prompting:+.2f} for prompting"
               + (" on held-out items" if halves.split else ""))
    claim = (f"On {family}, steering ({cell}) beats {k}: {numbers}." if ahead else
             f"On {family}, {k} beats the best steering cell ({cell}): {numbers}.")
    caveats = [f"the steering cell is the {family} boost with the largest own effect beyond the random vector on the "
               "selection half; which side the claim takes is decided there too" if halves.split else
               "cell chosen and compared on the same items"]
    return card(claim, "steering_heatmap", f"{halves.report} on {family} (per seed)", ev,
                k if ahead else f"steering ({cell})", caveats, layer=layer_value(layer), strength=strength,
                family=family, vector_type=vtype, steering_ahead=bool(ahead))


def _where(record: SweepRecord, layer: str) -> str:
    layers = [int(x) for x in layer.split("+")]
    depth = sum(layers) / len(layers) / record.n_layers
    return (f"L{layer}" if len(layers) == 1 else f"layers {{{', '.join(map(str, layers))}}}") + f" ({depth:.0%} depth)"


def _std(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _cell_rows(steer: pd.DataFrame, vtype: str, layer: str, strength: float) -> pd.DataFrame:
    return steer[(steer["vector_type"] == vtype) & (steer["layer"] == layer) & (steer["strength"] == strength)]


def _cell_mean(steer: pd.DataFrame, vtype: str, layer: str, strength: float, metric: str) -> float:
    """Mean over seeds of the family mean of `metric` at one cell (nan if not logged)."""
    rows = _cell_rows(steer, vtype, layer, strength)
    if metric not in rows or rows[metric].isna().all():
        return float("nan")
    return float(rows.groupby("seed")[metric].mean().mean())


def _cell_notes(steer: pd.DataFrame, vtype: str, layer: str, strength: float) -> list[str]:
    rows = _cell_rows(steer, vtype, layer, strength)
    notes = []
    if "accuracy_clean" in rows and rows["accuracy_clean"].mean() < 0.5:
        notes.append(f"the model gets only {rows['accuracy_clean'].mean():.0%} of these eval items right unsteered")
    for metric, text in (("kl", "KL(clean || steered) there: {:.2f}"),
                         ("selectivity", "selectivity (own / collateral log-prob drop): {:.2f}"),
                         ("anti_steerable_fraction", "anti-steerable: {:.0%} of the items move the other way"),
                         ("cos_mean_diff", "cosine to mean_diff at that layer: {:.2f}")):
        if metric in rows and rows[metric].notna().any():
            notes.append(text.format(rows[metric].mean()) + " (mean over runs)")
    if "fluency_nll" in rows and rows["fluency_nll"].notna().any():
        notes.append(f"generation: fluency NLL {rows['fluency_nll'].mean():.2f} (unsteered "
                     f"{rows['fluency_nll_clean'].mean():.2f}), repeated 4-grams {rows['repetition'].mean():.0%} "
                     f"({rows['repetition_clean'].mean():.0%}), target in the continuation "
                     f"{rows['target_hit_rate'].mean():.0%} ({rows['target_hit_rate_clean'].mean():.0%})")
    return notes


def _geometry(steer: pd.DataFrame, result: Section) -> None:
    """Each vector type's cosine to mean_diff and each family's pair consistency by (single) layer."""
    if "cos_mean_diff" not in steer or steer["cos_mean_diff"].isna().all():
        return
    single = steer[~steer["layer"].str.contains(r"\+")].assign(layer=lambda f: f["layer"].astype(int))
    cos = over_seeds(seed_means(single.assign(line=single["vector_type"]), ["line", "layer"], "cos_mean_diff"),
                     ["line", "layer"], "cos_mean_diff")
    pairs = over_seeds(single.assign(line=single["family"]).groupby(["seed", "line", "layer"], as_index=False)
                       ["pair_consistency"].mean(), ["line", "layer"], "pair_consistency")
    result.figures.append(Shown(
        "steering_geometry", "Steering vectors: cosine to mean_diff, and the pairs' consistency",
        "Left: each vector type's cosine to mean_diff at the same layer (mean ± std over seeds and families). Right: "
        "each family's pair consistency, the mean cosine between each train pair's difference (prompt + target minus "
        "prompt + distractor) and their mean difference; low consistency predicts weak, unreliable steering. pca "
        "far from mean_diff on a family with low consistency means the pairs' differences point in several "
        "directions (e.g. answers that swap roles across items) and the first principal component follows the "
        "largest of them, not the shared one: see docs/steering.md.", geometry(cos, pairs)))
    low = cos[(cos["line"] == "pca")]
    if len(low):
        result.notes.append("pca's cosine to mean_diff by layer: " + ", ".join(
            f"L{int(r.layer)} {r.mean:+.2f}" for r in low.itertuples()))


def cell_gains(steer: pd.DataFrame) -> pd.Series:
    """Per (layer, strength, vector_type) cell of non-control vectors: the mean over seeds of ld_delta - random's at
    the same seed, layer and strength (ld_delta without a random vector); empty without such cells."""
    gap = _minus_control(seed_means(steer, AXES, "ld_delta"), "ld_delta")
    return gap.groupby(AXES)["gap"].mean() if not gap.empty else pd.Series(dtype=float)


def strongest_cells(steer: pd.DataFrame, k: int = STRONGEST) -> list[tuple[str, str, float]]:
    """The k (vector_type, layer, strength) cells with the largest |ld_delta - random's| (|ld_delta| without one)."""
    size = cell_gains(steer).abs().sort_values(ascending=False)
    return [(v, layer, float(s)) for (layer, s, v) in size.index[:k]]


def cell_label(vtype: str, layer: str, strength: float) -> str:
    return f"{vtype}@L{layer}x{strength:g}"


def _steered(frame: pd.DataFrame) -> pd.DataFrame:
    """A summary frame's steering rows (no prompting baseline), layers labelled as the report's ("6+21": a set)."""
    steer = frame[frame["vector_type"] != PROMPT]
    return steer.assign(layer=steer["layer"].map(layer_tuple).map(layer_label))


def _reliability(record: SweepRecord, steer: pd.DataFrame, result: Section) -> None:
    """Per-item shifts (items.parquet on the parent run) and anti-steerable shares of the strongest cells."""
    if "anti_steerable_fraction" not in steer:
        return
    cells = strongest_cells(steer)
    anti = {f"{v} L{layer} {s:+g}": _cell_mean(steer, v, layer, s, "anti_steerable_fraction") for v, layer, s in cells}
    result.notes.append("anti-steerable fraction (items moved against the strength's sign) of the strongest cells: "
                        + "; ".join(f"{name}: {fmt(a, '.0%') if not np.isnan(a) else '–'}" for name, a in anti.items()))
    with tempfile.TemporaryDirectory() as tmp:
        path = record.sweep_file("items.parquet", Path(tmp))
        items = pd.read_parquet(path) if path is not None else None
    if items is None:
        result.notes.append("no items.parquet on the sweep's parent runs: per-item shifts are not drawn")
        return
    items = items[items["vector_type"] != PROMPT].copy()
    items["layer"] = items["layer"].map(lambda v: layer_label(layer_tuple(v)))
    shifts = {}
    for (v, layer, s), name in zip(cells, anti):
        rows = items[(items["vector_type"] == v) & (items["layer"] == layer) & (items["strength"] == s)]
        shifts[name] = (rows["ld_steered"] - rows["ld_clean"]).to_numpy(float)
    result.figures.append(Shown(
        "steering_items", "Per-item shifts of the strongest cells",
        f"The {len(cells)} cells furthest from the random vector (|mean ld_delta - random's|): each eval item's LD "
        "shift (steered - clean), pooled over seeds and families (items.parquet). A positive mean can hide many "
        "items moved the other way (anti-steerable, Tan et al. 2024).", item_shifts(shifts, anti)))


def _generation(steer: pd.DataFrame, result: Section) -> None:
    """Generation metrics by strength at the layer of the strongest cell (when the sweep generated)."""
    if "fluency_nll" not in steer or steer["fluency_nll"].isna().all():
        return
    cells = strongest_cells(steer, 1)
    layer = cells[0][1] if cells else steer["layer"].iloc[0]
    at = steer[steer["layer"] == layer]
    parts = [over_seeds(seed_means(at, ["vector_type", "strength"], m), ["vector_type", "strength"], m).assign(metric=m)
             for m in GENERATION if m in at]
    clean = {m: float(at[f"{m}_clean"].mean()) for m in GENERATION if f"{m}_clean" in at}
    result.figures.append(Shown(
        "steering_generation", f"Generation with the vector added at L{layer}",
        "Greedy continuations of the eval prompts with the vector added at every position (mean ± std over seeds of "
        "the family mean): target token in the continuation, NLL of the continuation under the unsteered model "
        "(fluency), share of repeated 4-grams, KL on neutral prompts (side effect). Dashed: the unsteered "
        "continuation.", generation_lines(pd.concat(parts, ignore_index=True), clean, f"layer {layer}")))
