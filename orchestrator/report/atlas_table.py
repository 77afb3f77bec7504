"""The study's key-metrics table: ROWS (one declaration per row), each a per-seed number read from one member sweep.

A row names the member kind it reads and a function from one model's SweepRecord to a Series seed -> value; the
cell is mean ± cross-seed std (ddof=1) over seeds, graded by claims.grade (no control: at best B; a location row's
seed agrees when it gives the cross-seed mode, a value row's when its sign is the mean's). A row no kind can measure
yet is declared with `missing` and shown as "not measured: <why>".
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

KEEP = 0.5  # the top-1 agreement an early exit must keep (sections/layers.py's threshold)


@dataclass(frozen=True)
class Row:
    """One row of the key-metrics table."""

    kind: str | None  # the member kind it reads (None: not measurable yet)
    value: Callable[[SweepRecord], pd.Series] | None  # one model's record -> seed -> number (nan: none)
    unit: str = ""
    location: bool = False  # a layer index: seeds agree when they give the mode
    research: str = ""  # the research's figure, where the seeds give one
    missing: str = ""  # why the row is not measured


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


def _max_effect(component: str) -> Callable[[SweepRecord], pd.Series]:
    def value(record: SweepRecord) -> pd.Series:
        prof = _profile(record, component)
        return prof.groupby("seed")[METRIC].max() if not prof.empty else pd.Series(dtype=float)
    return value


def head_max(record: SweepRecord) -> pd.Series:
    """Per seed, the largest family-mean KL of ablating one head (over layers, heads and methods)."""
    frame = record.frame
    if "component" not in frame or not (frame["component"] == "head").any():
        return pd.Series(dtype=float)
    rows = frame[frame["component"] == "head"]
    return rows.groupby(["seed", "layer", "head", "method"])["kl"].mean().groupby("seed").max()


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


def _declare(name: str, row: Row) -> None:
    ROWS.register(name)(row)
    ORDER.append(name)


RESEARCH = "Qwen2.5 0.5B / 1.5B / 3B (bf16 base; seeds)"
_declare("hub layer", Row("ablation", hub_layer, location=True, research=f"{RESEARCH}: L2 / L14 / L34"))
_declare("hub depth", Row("ablation", hub_depth, "layer / n_layers", location=True,
                          research=f"{RESEARCH}: 0.08 / 0.50 / 0.94"))
_declare("hub max KL", Row("ablation", _max_effect("layer"), "nats", research=f"{RESEARCH}: 19.11 / 13.70 / 221.34"))
_declare("MLP max effect", Row("ablation", _max_effect("mlp"), "KL, nats", research=f"{RESEARCH}: 8.12 / 2.58 / –"))
_declare("head max effect", Row("ablation", head_max, "KL, nats", research=f"{RESEARCH}: 0.046 / 1.023 / –"))
_declare("best steering boost", Row("steering", best_boost, "ld_delta (all eval items; not held-out)",
                                    research=f"{RESEARCH}: +2.16 / +4.64 / –"))
_declare("knockout selectivity", Row("steering", knockout_selectivity, "own / collateral drop"))
_declare("layer skipping", Row("skip", best_skip_overlap, "best top-5 overlap of a single-layer skip",
                              research=f"{RESEARCH}: 0 / 0 / 0 (always fatal)"))
_declare("early exit", Row("early_exit", first_exit, f"depth of the first exit with top-1 >= {KEEP}"))
_declare("multi-layer steering", Row("steering", multi_layer, "ld_delta of a layer set (largest |.|)",
                                     research=f"{RESEARCH}: +1.17 / -7.20 / –"))
_declare("cross-model transfer zone", Row(None, None, missing="needs a cross_model_patch member with a trained "
                                          "model of the same architecture"))
_declare("adapter norm-effect correlation", Row(None, None, missing="needs an adapter member (LoRA training), not "
                                                "in the CPU-sized study"))


@dataclass
class Cell:
    values: pd.Series  # seed -> value
    grade: str
    why: str
    member: str  # the sweep (experiment) it was read from
    link: str  # the MLflow URL of that sweep

    @property
    def text(self) -> str:
        v = self.values.dropna()
        if v.empty:
            return "no value"
        std = fmt(float(v.std(ddof=1)), ".2g") if len(v) > 1 else "nan"
        return f"{fmt(float(v.mean()))} ± {std}"


def cell(row: Row, record: SweepRecord, member: str, link: str) -> Cell:
    values = row.value(record).dropna()
    if values.empty:
        return Cell(values, "–", "no value", member, link)
    if row.location:
        counts = values.value_counts()
        mode = min(counts.index[counts == counts.max()])  # as hubs.mode_and_std, for depths too
        agree = {s: v == mode for s, v in values.items()}
    else:
        sign = np.sign(values.mean())
        agree = {s: np.sign(v) == sign and v != 0 for s, v in values.items()}
    g, why = grade(Evidence({int(s): float(v) for s, v in values.items()}, agree))
    return Cell(values, g, why, member, link)


def table(members: list[tuple[str, SweepRecord, str]], models: list[str]) -> dict[str, dict[str, Cell | str]]:
    """row -> model -> its Cell, or a string saying why there is none; `members` are (experiment, record, url)."""
    out: dict[str, dict[str, Cell | str]] = {}
    for name in ORDER:
        row = ROWS.get(name)
        out[name] = {}
        for model in models:
            if row.kind is None:
                out[name][model] = f"not measured: {row.missing}"
                continue
            found: Cell | str = f"not measured: no {row.kind} member in the study"
            for experiment, record, link in members:
                if record.kind != row.kind:
                    continue
                parts = {r.model: r for r in record.by_model()}
                if model not in parts:
                    found = f"not measured: {experiment} has no runs of {model}"
                    continue
                got = cell(row, parts[model], experiment, link)
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
        if row.research:
            label += f"<br><span class='small'>research: {e(row.research)}</span>"
        tds = []
        for model in models:
            c = by_model[model]
            if isinstance(c, str):
                tds.append(f"<td class='missing'>{e(c)}</td>")
            else:
                seeds = ", ".join(f"s{s}: {fmt(float(v))}" for s, v in c.values.items())
                tds.append(f"<td title='{e(c.why)}'>{e(c.text)} <b>[{e(c.grade)}]</b><br><span class='small'>"
                           f"{e(seeds)}; <a href='{e(c.link)}'>{e(c.member)}</a> · "
                           f"<a href='#member-{e(c.member)}'>section</a></span></td>")
        body.append(f"<tr><th class='row'>{label}</th>{''.join(tds)}</tr>")
    return ("<h2 id='key-metrics'>Key metrics</h2><p class='small'>Each cell: mean ± cross-seed std (ddof=1), the "
            "grade [A/B/C] of the claim that the value holds across seeds (no control here: at best B), the per-seed "
            "values, the sweep behind it.</p>"
            f"<table class='facts atlas'><tr><th>row</th>{head}</tr>{''.join(body)}</table>")
