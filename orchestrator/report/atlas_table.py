"""The study's key-metrics table: ROWS (one declaration per row), each a per-seed number read from one member sweep.

A row names the member kind it reads and a function from one model's SweepRecord to a Series seed -> value; the
cell is mean ± cross-seed std (ddof=1) over seeds, graded by claims.grade (no control: at best B; a location row's
seed agrees when it gives the cross-seed mode, a threshold row's when it reaches the threshold, a value row's when
its sign is the mean's). Beside a cell whose model has a research figure (research.py): that figure and whether
ours reproduces it by the row's rule, graded the same way (a seed agrees when it gives the verdict). Every row is
defined in docs/kinds.md, "Key-metrics rows".
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from interventions.registry import Registry
from orchestrator.numbers import fmt
from orchestrator.report.claims import Evidence, grade
from orchestrator.report.hubs import METRIC, hub_of, layer_profiles
from orchestrator.report.record import SweepRecord
from orchestrator.report.research import Figure, Rule, at_least, factor, figure, has_figures, near, side

KEEP = 0.5  # the top-1 agreement an early exit must keep (sections/layers.py's threshold)
TOP_HEADS = 3  # a head covers a family when it is among the family's TOP_HEADS heads by KL
CROSS_TASK = 2  # a head is cross-task when it covers at least this many families
RECOVERS = 0.9  # the recovery every layer of the cross-model transfer zone reaches


@dataclass(frozen=True)
class Row:
    """One row of the key-metrics table."""

    kind: str  # the member kind it reads
    value: Callable[[SweepRecord], pd.Series]  # one model's record -> seed -> number (nan: none)
    unit: str = ""
    location: bool = False  # a layer index or depth: seeds agree when they give the mode
    rule: Rule | None = None  # when our value reproduces the research's figure (research.py)
    at_least: float | None = None  # a threshold row: a seed agrees when its value reaches this
    label: Callable[[SweepRecord], str] | None = None  # what the cell names besides its number (the head)


ROWS: Registry[Row] = Registry("key-metrics row")
ORDER: list[str] = []  # the rows in declaration order (the table's order)


def _profile(record: SweepRecord, component: str) -> pd.DataFrame:
    """Family-mean effect per (seed, layer) of `component`, the `mean` method if swept, else the first method."""
    if "component" not in record.frame:
        return pd.DataFrame(columns=["seed", "layer", METRIC])
    prof = layer_profiles(record.frame)
    prof = prof[prof["component"] == component]
    if prof.empty:
        return prof
    method = "mean" if (prof["method"] == "mean").any() else prof["method"].iloc[0]
    return prof[prof["method"] == method]


def hub_layer(record: SweepRecord) -> pd.Series:
    prof = _profile(record, "layer")
    return hub_of(prof).astype(float) if not prof.empty else pd.Series(dtype=float)


def hub_depth(record: SweepRecord) -> pd.Series:
    return hub_layer(record) / record.n_layers


def _max_effect(record: SweepRecord, component: str) -> pd.Series:
    prof = _profile(record, component)
    return prof.groupby("seed")[METRIC].max() if not prof.empty else pd.Series(dtype=float)


def hub_max_kl(record: SweepRecord) -> pd.Series:
    """Per seed, the largest family-mean `layer` effect over layers (the hub's)."""
    return _max_effect(record, "layer")


def mlp_max(record: SweepRecord) -> pd.Series:
    """Per seed, the largest family-mean `mlp` effect over layers."""
    return _max_effect(record, "mlp")


def _heads(record: SweepRecord) -> pd.DataFrame:
    frame = record.frame
    if "component" not in frame or not (frame["component"] == "head").any():
        return pd.DataFrame(columns=["seed", "family", "layer", "head", "method", "kl"])
    return frame[frame["component"] == "head"]


def head_max(record: SweepRecord) -> pd.Series:
    """Per seed, the largest family-mean KL of ablating one head (over layers, heads and methods)."""
    rows = _heads(record)
    if rows.empty:
        return pd.Series(dtype=float)
    return rows.groupby(["seed", "layer", "head", "method"])["kl"].mean().groupby("seed").max()


def _coverage(record: SweepRecord) -> tuple[tuple[int, int] | None, pd.Series, int]:
    """(the named head (layer, head), seed -> how many families' top TOP_HEADS heads hold it, families swept).

    Per seed and family the heads are ranked by KL (method `mean` if swept, else the first; ties: the lower layer,
    then head). Each seed's most cross-task head covers the most families (ties: the larger KL averaged over
    families, then the lower layer, head); the named head is the cross-seed mode of those (ties: the lower)."""
    rows = _heads(record)
    if rows.empty:
        return None, pd.Series(dtype=float), 0
    method = "mean" if (rows["method"] == "mean").any() else rows["method"].iloc[0]
    kl = rows[rows["method"] == method].groupby(["seed", "family", "layer", "head"], as_index=False)["kl"].mean()
    ranked = kl.sort_values(["seed", "family", "kl", "layer", "head"], ascending=[True, True, False, True, True])
    top = ranked.groupby(["seed", "family"]).head(TOP_HEADS)
    counts = top.groupby(["seed", "layer", "head"]).size().rename("n").reset_index()
    strength = kl.groupby(["seed", "layer", "head"], as_index=False)["kl"].mean()
    counts = counts.merge(strength, on=["seed", "layer", "head"])
    best = counts.sort_values(["seed", "n", "kl", "layer", "head"], ascending=[True, False, False, True, True])
    per_seed = best.groupby("seed").first()
    votes = pd.Series(list(zip(per_seed["layer"].astype(int), per_seed["head"].astype(int)))).value_counts()
    named = min(votes.index[votes == votes.max()])
    mine = counts[(counts["layer"] == named[0]) & (counts["head"] == named[1])].set_index("seed")["n"]
    values = mine.reindex(sorted(kl["seed"].unique()), fill_value=0).astype(float)
    return named, values, int(kl["family"].nunique())


def head_coverage(record: SweepRecord) -> pd.Series:
    """Per seed, how many families' top TOP_HEADS heads (by KL) hold the named most cross-task head."""
    return _coverage(record)[1]


def head_coverage_label(record: SweepRecord) -> str:
    """'L0 H3: 4 of 6 families' (the seeds' mean count), or '' without head trials."""
    named, values, families = _coverage(record)
    if named is None:
        return ""
    return f"L{named[0]} H{named[1]}: {fmt(float(values.mean()))} of {families} families"


def _steered(record: SweepRecord, sets: bool) -> pd.DataFrame:
    """Family-mean ld_delta per (seed, layer label, strength, vector type) of non-random vectors at positive
    strengths, single-layer cells or layer-set cells (sections/steering.py's labels: "6+21" for a set)."""
    from orchestrator.report.sections.steering import split_frame

    if "strength" not in record.frame:
        return pd.DataFrame(columns=["seed", "ld_delta"])
    steer = split_frame(record)[0]
    steer = steer[(steer["vector_type"] != "random") & (steer["strength"] > 0)]
    steer = steer[steer["layer"].str.contains(r"\+") == sets]
    return steer.groupby(["seed", "layer", "strength", "vector_type"], as_index=False)["ld_delta"].mean()


def best_boost(record: SweepRecord) -> pd.Series:
    """Per seed, the largest family-mean ld_delta of a non-random vector at one layer and a positive strength."""
    cells = _steered(record, sets=False)
    return cells.groupby("seed")["ld_delta"].max() if not cells.empty else pd.Series(dtype=float)


def multi_layer(record: SweepRecord) -> pd.Series:
    """Per seed, the family-mean ld_delta of largest magnitude (signed) of a non-random vector steering a layer set
    at a positive strength (the seeds' -7.20 at 1.5B is such a signed value)."""
    cells = _steered(record, sets=True)
    if cells.empty:
        return pd.Series(dtype=float)
    return cells.loc[cells["ld_delta"].abs().groupby(cells["seed"]).idxmax()].set_index("seed")["ld_delta"]


def knockout_selectivity(record: SweepRecord) -> pd.Series:
    """Per seed, the largest family-mean selectivity of a non-random vector at a negative strength."""
    frame = record.frame
    if "selectivity" not in frame:
        return pd.Series(dtype=float)
    rows = frame[(frame["vector_type"] != "random") & (frame["strength"] < 0)].dropna(subset=["selectivity"])
    if rows.empty:
        return pd.Series(dtype=float)
    return rows.groupby(["seed", "layer", "strength", "vector_type"])["selectivity"].mean().groupby("seed").max()


def best_skip_overlap(record: SweepRecord) -> pd.Series:
    """Per seed, the largest family-mean top-5 overlap with the full model of skipping one layer."""
    frame = record.frame
    single = frame[frame["skip"].map(lambda s: len(json.loads(s)) == 1)]
    if single.empty:
        return pd.Series(dtype=float)
    return single.groupby(["seed", "skip"])["top5_overlap"].mean().groupby("seed").max()


def first_exit(record: SweepRecord) -> pd.Series:
    """Per seed, the depth (layer / n_layers) of the first exit layer whose family-mean top-1 agreement >= KEEP
    (nan for a seed with none)."""
    means = record.frame.groupby(["seed", "exit_layer"])["top1_agreement"].mean().reset_index()
    out = {}
    for seed, part in means.groupby("seed"):
        kept = part[part["top1_agreement"] >= KEEP]["exit_layer"]
        out[seed] = kept.min() / record.n_layers if not kept.empty else math.nan
    return pd.Series(out, dtype=float)


def transfer_zone(record: SweepRecord) -> pd.Series:
    """Per seed, the shallowest swept depth from which every deeper swept layer's mean recovery (over families and
    adapter settings) is >= RECOVERS: the zone is [that depth, 1]. A layer whose recovery is undefined everywhere
    (no LD gap) is left out; nan for a seed whose deepest layer misses RECOVERS."""
    frame = record.frame
    if "recovery" not in frame:
        return pd.Series(dtype=float)
    means = frame.groupby(["seed", "layer"])["recovery"].mean().dropna()
    out = {}
    for seed, part in means.groupby(level="seed"):
        part = part.droplevel("seed").sort_index()
        short = part.index[part < RECOVERS]
        zone = part.index[part.index > short.max()] if len(short) else part.index
        out[seed] = zone.min() / record.n_layers if len(zone) else math.nan
    return pd.Series(out, dtype=float)


def norm_effect_correlation(record: SweepRecord) -> pd.Series:
    """Per seed, the mean over its adapters (families, LoRA settings) of the `norm_effect` operation's Spearman
    correlation over layers between the layer's LoRA norm and the KL of dropping that layer's LoRA."""
    frame = record.frame
    if not {"operation", "spearman"} <= set(frame):
        return pd.Series(dtype=float)
    return frame[frame["operation"] == "norm_effect"].groupby("seed")["spearman"].mean()


def _declare(name: str, row: Row) -> None:
    ROWS.register(name)(row)
    ORDER.append(name)


SAME_DEPTH = near(0.1, " depth")  # a location: within a tenth of the depth (2-4 layers at 24-36 layers)
SAME_SIZE = factor(2.0)  # a magnitude: half to twice the research's (other weights, families and items than theirs)
_declare("hub layer", Row("ablation", hub_layer, location=True, rule=near(0, " layer")))
_declare("hub depth", Row("ablation", hub_depth, "layer / n_layers", location=True, rule=SAME_DEPTH))
_declare("hub max KL", Row("ablation", hub_max_kl, "nats", rule=SAME_SIZE))
_declare("MLP max effect", Row("ablation", mlp_max, "KL, nats", rule=SAME_SIZE))
_declare("head max effect", Row("ablation", head_max, "KL, nats", rule=SAME_SIZE))
_declare("head family coverage", Row("ablation", head_coverage, f"families whose top {TOP_HEADS} heads hold it",
                                     rule=at_least(CROSS_TASK), at_least=CROSS_TASK, label=head_coverage_label))
_declare("best steering boost", Row("steering", best_boost, "ld_delta (all eval items; not held-out)",
                                    rule=SAME_SIZE))
_declare("knockout selectivity", Row("steering", knockout_selectivity, "own / collateral drop", rule=side(1.0)))
_declare("layer skipping", Row("skip", best_skip_overlap, "best top-5 overlap of a single-layer skip",
                              rule=near(0.1)))
_declare("early exit", Row("early_exit", first_exit, f"depth of the first exit with top-1 >= {KEEP}", location=True,
                           rule=near(0.03, " depth")))
_declare("multi-layer steering", Row("steering", multi_layer, "ld_delta of a layer set (largest |.|)",
                                     rule=SAME_SIZE))
_declare("cross-model transfer zone", Row("cross_model_patch", transfer_zone,
                                          f"depth from which every layer recovers >= {RECOVERS}", location=True,
                                          rule=SAME_DEPTH))
_declare("adapter norm-effect correlation", Row("adapter", norm_effect_correlation,
                                                "Spearman over layers, LoRA norm vs drop effect", rule=near(0.2)))


@dataclass
class Cell:
    values: pd.Series  # seed -> value
    grade: str
    why: str
    member: str  # the sweep (experiment) it was read from
    link: str  # the MLflow URL of that sweep
    label: str = ""  # what the row names besides the number (the most cross-task head)
    research: str = ""  # the research's figure and the verdict, where the model has one

    @property
    def text(self) -> str:
        v = self.values.dropna()
        if v.empty:
            return "no value"
        std = fmt(float(v.std(ddof=1)), ".2g") if len(v) > 1 else "nan"
        return (f"{self.label}; " if self.label else "") + f"{fmt(float(v.mean()))} ± {std}"


def central(row: Row, values: pd.Series) -> float:
    """The cross-seed value a claim is about: the mode (ties: the lowest) of a location row, else the mean."""
    if row.location:
        counts = values.value_counts()
        return float(min(counts.index[counts == counts.max()]))  # as hubs.mode_and_std, for depths too
    return float(values.mean())


def _grade(values: pd.Series, agree: dict) -> tuple[str, str]:
    return grade(Evidence({int(s): float(v) for s, v in values.items()}, agree))


def verdict(row: Row, values: pd.Series, fig: Figure) -> str:
    """'reproduces (grade B)' or 'does not reproduce (grade B)': the rule on the cross-seed value; a seed agrees
    when its own value gives the same verdict."""
    holds = row.rule.holds(central(row, values), fig)
    g, _ = _grade(values, {s: row.rule.holds(float(v), fig) == holds for s, v in values.items()})
    return f"{'reproduces' if holds else 'does not reproduce'} (grade {g})"


def cell(row: Row, record: SweepRecord, member: str, link: str, name: str = "") -> Cell:
    """The row's cell for one model's record; `name` (the row's) looks up the research's figure for that model."""
    values = row.value(record).dropna()
    if values.empty:
        return Cell(values, "–", "no value", member, link)
    mid = central(row, values)
    if row.location:
        agree = {s: v == mid for s, v in values.items()}
    elif row.at_least is not None:
        agree = {s: v >= row.at_least for s, v in values.items()}
    else:
        agree = {s: np.sign(v) == np.sign(mid) and v != 0 for s, v in values.items()}
    g, why = _grade(values, agree)
    fig = figure(name, record.model) if row.rule is not None else None
    research = (f"research: {fig.text}; {verdict(row, values, fig)}" if fig
                else "no research figure at this size" if has_figures(name) else "")
    return Cell(values, g, why, member, link, row.label(record) if row.label else "", research)


def table(members: list[tuple[str, SweepRecord, str]], models: list[str]) -> dict[str, dict[str, Cell | str]]:
    """row -> model -> its Cell, or a string saying why there is none; `members` are (experiment, record, url)."""
    out: dict[str, dict[str, Cell | str]] = {}
    for name in ORDER:
        row = ROWS.get(name)
        out[name] = {}
        for model in models:
            found: Cell | str = f"not measured: no {row.kind} member in the study"
            for experiment, record, link in members:
                if record.kind != row.kind:
                    continue
                parts = {r.model: r for r in record.by_model()}
                if model not in parts:
                    found = f"not measured: {experiment} has no runs of {model}"
                    continue
                got = cell(row, parts[model], experiment, link, name)
                if not got.values.empty:
                    found = got
                    break
                found = f"not measured: {experiment} has no cells this row reads"
            out[name][model] = found
    return out


def table_html(cells: dict[str, dict[str, Cell | str]], models: list[str]) -> str:
    """The table as an HTML block: a row per ROWS entry, a column per model, each cell linked to its sweep."""
    e = html.escape
    head = "".join(f"<th>{e(m)}</th>" for m in models)
    body = []
    for name, by_model in cells.items():
        row = ROWS.get(name)
        label = e(name) + (f"<br><span class='small'>{e(row.unit)}</span>" if row.unit else "")
        if row.rule is not None and has_figures(name):
            label += f"<br><span class='small'>reproduces when: {e(row.rule.text)}</span>"
        tds = []
        for model in models:
            c = by_model[model]
            if isinstance(c, str):
                tds.append(f"<td class='missing'>{e(c)}</td>")
            else:
                seeds = ", ".join(f"s{s}: {fmt(float(v))}" for s, v in c.values.items())
                research = f"<br><span class='small research'>{e(c.research)}</span>" if c.research else ""
                tds.append(f"<td title='{e(c.why)}'>{e(c.text)} <b>[{e(c.grade)}]</b><br><span class='small'>"
                           f"{e(seeds)}; <a href='{e(c.link)}'>{e(c.member)}</a> · "
                           f"<a href='#member-{e(c.member)}'>section</a></span>{research}</td>")
        body.append(f"<tr><th class='row'>{label}</th>{''.join(tds)}</tr>")
    return ("<h2 id='key-metrics'>Key metrics</h2><p class='small'>Each cell: mean ± cross-seed std (ddof=1), the "
            "grade [A/B/C] of the claim that the value holds across seeds (no control here: at best B), the per-seed "
            "values, the sweep behind it; for a model the research measured at its size (Qwen2.5 0.5B, 1.5B, 3B "
            "base models; ours are the Coder instruct ones), the research's figure and whether ours reproduces it "
            "by the row's rule, graded the same way (definitions: docs/kinds.md, Key-metrics rows).</p>"
            f"<table class='facts atlas'><tr><th>row</th>{head}</tr>{''.join(body)}</table>")
