"""Skill separability tables: SSS and its components per (model, family, seed) from sweeps' tidy frames, over seeds."""
from __future__ import annotations

import html
from typing import Iterable

import numpy as np
import pandas as pd
from rich.table import Table

from interventions.ablation import HUB
from interventions.separability import COMPONENTS, SkillEvidence, components, score
from orchestrator.numbers import pm
from orchestrator.report.record import SweepRecord

KEYS = ["model", "family", "seed"]
CLEAN_METHODS = ("mean", "zero", "resample", "random", "corrupt_to_clean")  # methods whose `kl` is a knockout


def _keyed(frame: pd.DataFrame | None, model: str | None) -> pd.DataFrame | None:
    if frame is None or not len(frame):
        return None
    frame = frame.copy()
    if "model" not in frame or frame["model"].isna().all():
        frame["model"] = model or "model"
    return frame


def _ablation_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The `layer` component's rows of one clean-run method (`mean`, else the first of CLEAN_METHODS present), whole
    positions, no head: the ablation profile each family's sharpness, knockout and collateral read."""
    rows = frame[frame["component"] == HUB[0]] if "component" in frame else frame
    if "head" in rows:
        rows = rows[rows["head"].isna()]
    if "positions" in rows:
        rows = rows[rows["positions"].isna() | (rows["positions"] == "all")]
    present = [m for m in CLEAN_METHODS if "method" in rows and (rows["method"] == m).any()]
    if "method" in rows:
        rows = rows[rows["method"] == present[0]] if present else rows.iloc[0:0]
    return rows.dropna(subset=["kl"])


def _profiles(rows: pd.DataFrame) -> dict[tuple, pd.Series]:
    """(model, seed) -> a frame family x layer of mean kl."""
    out = {}
    for (model, seed), part in rows.groupby(["model", "seed"], sort=True):
        out[(model, seed)] = part.pivot_table(index="family", columns="layer", values="kl", aggfunc="mean").sort_index(
            axis=1)
    return out


def _boosts(frame: pd.DataFrame) -> dict[tuple, float]:
    """(model, family, seed) -> the largest ld_delta of a non-random vector at strength > 0 minus the random vector's
    at the same layer and strength (without random rows: the ld_delta itself)."""
    rows = frame[(frame["strength"] > 0)].dropna(subset=["ld_delta"])
    if "positions" in rows:
        rows = rows[rows["positions"].isna() | (rows["positions"] == "all")]
    cell = ["model", "family", "seed", "layer", "strength"]
    control = rows[rows["vector_type"] == "random"].groupby(cell)["ld_delta"].mean().rename("control")
    real = rows[rows["vector_type"] != "random"].groupby([*cell, "vector_type"], as_index=False)["ld_delta"].mean()
    real = real.merge(control.reset_index(), on=cell, how="left")
    real["beyond"] = real["ld_delta"] - real["control"].fillna(0.0)
    return {k: float(v) for k, v in real.groupby(KEYS)["beyond"].max().items()}


def _recoveries(frame: pd.DataFrame, n_layers: dict[str, int]) -> dict[tuple, np.ndarray]:
    """(model, family, seed) -> recovery per layer (mean over the adapter axes), the model's last layer left out."""
    rows = frame.dropna(subset=["recovery"])
    last = rows["model"].map(lambda m: n_layers.get(m, np.inf) - 1)
    rows = rows[rows["layer"] < last]
    per = rows.groupby([*KEYS, "layer"], as_index=False)["recovery"].mean().sort_values("layer")
    return {k: part["recovery"].to_numpy() for k, part in per.groupby(KEYS)}


def separability_table(ablation: pd.DataFrame | None = None, steering: pd.DataFrame | None = None,
                       cross_model: pd.DataFrame | None = None, n_layers: dict[str, int] | None = None,
                       model: str | None = None) -> pd.DataFrame:
    """SSS per (model, family, seed): columns model, family, seed, sss, n_components, then one column per
    registered component (nan where its evidence was not measured).

    Input: tidy frames as `SweepRecord.frame` holds them (one row per FINISHED grid point, axis columns, metric
    columns; a `model` column, else `model` names them), one per kind, any of them absent:
    - `ablation`: rows with `component`, `method`, `layer`, `family`, `seed`, `kl` (the `layer`/`mean` profile;
      another clean-run method when mean is absent); collateral needs two families or more;
    - `steering`: `layer`, `strength`, `vector_type`, `family`, `seed`, `ld_delta`;
    - `cross_model`: `layer`, `family`, `seed`, `recovery`; `n_layers` (model -> layer count) leaves each model's
      last layer out, where recovery is 1 by construction.
    The score is the mean of the components present; `n_components` says how many there were."""
    ablation, steering, cross_model = (_keyed(f, model) for f in (ablation, steering, cross_model))
    profiles = _profiles(_ablation_rows(ablation)) if ablation is not None and "kl" in ablation else {}
    boosts = _boosts(steering) if steering is not None and "ld_delta" in steering else {}
    recoveries = _recoveries(cross_model, n_layers or {}) if cross_model is not None and "recovery" in cross_model \
        else {}
    keys = {(m, f, s) for (m, s), p in profiles.items() for f in p.index} | set(boosts) | set(recoveries)
    names, rows = COMPONENTS.names(), []
    for m, f, s in sorted(keys, key=lambda k: tuple(map(str, k))):
        own = others = None
        if (m, s) in profiles and f in profiles[(m, s)].index:
            p = profiles[(m, s)]
            own = p.loc[f].to_numpy(dtype=float)
            others = p.drop(index=f).to_numpy(dtype=float) if len(p) > 1 else None
        parts = components(SkillEvidence(own=own, others=others, boost=boosts.get((m, f, s)),
                                         recovery=recoveries.get((m, f, s))))
        rows.append({"model": m, "family": f, "seed": s, "sss": score(parts), "n_components": len(parts),
                     **{n: parts.get(n, float("nan")) for n in names}})
    return pd.DataFrame(rows, columns=[*KEYS, "sss", "n_components", *names])


def from_records(records: Iterable[SweepRecord]) -> pd.DataFrame:
    """separability_table from read sweeps (ablation, steering and cross_model_patch ones; others are ignored)."""
    frames: dict[str, list[pd.DataFrame]] = {}
    n_layers: dict[str, int] = {}
    for record in records:
        frame = _keyed(record.frame, record.model)
        if frame is None:
            continue
        frames.setdefault(record.kind, []).append(frame)
        n_layers.update({m: record.layers_of(m) for m in frame["model"].astype(str).unique()})
    joined = {k: pd.concat(v, ignore_index=True) for k, v in frames.items()}
    return separability_table(joined.get("ablation"), joined.get("steering"), joined.get("cross_model_patch"),
                              n_layers)


def over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, family): `<column>_mean`, `_std` (ddof=1), and n seeds, for sss and each component; best sss
    first."""
    columns = ["sss", *COMPONENTS.names()]
    grouped = table.groupby(["model", "family"], sort=False)
    out = grouped[columns].agg(["mean", lambda s: s.std(ddof=1)])
    out.columns = [f"{c}_{'mean' if s == 'mean' else 'std'}" for c, s in out.columns]
    out["n"] = grouped["seed"].nunique()
    out["n_components"] = grouped["n_components"].max()
    return out.reset_index().sort_values("sss_mean", ascending=False, na_position="last").reset_index(drop=True)


def render(summary: pd.DataFrame, title: str = "Skill separability (SSS)") -> Table:
    """The over_seeds table as rich: model, family, n, SSS and every component as mean ± std."""
    out = Table(title=title, title_justify="left", caption_justify="left",
                caption="cells: mean ± std (ddof=1) over seeds; SSS = mean of the components present (docs/kinds.md)")
    names = COMPONENTS.names()
    for name in ("model", "family", "n", "SSS", *names):
        out.add_column(name, justify="left" if name in ("model", "family") else "right")
    for _, row in summary.iterrows():
        out.add_row(str(row["model"]), str(row["family"]), str(int(row["n"])), pm(row["sss_mean"], row["sss_std"]),
                    *[pm(row[f"{n}_mean"], row[f"{n}_std"]) for n in names])
    return out


def notes(summary: pd.DataFrame) -> list[str]:
    """One report line per (model, family): SSS and its components, mean ± std over seeds."""
    names = COMPONENTS.names()
    return [f"SSS {row['family']} ({row['model']}): {pm(row['sss_mean'], row['sss_std'])} over {int(row['n'])} "
            f"seed(s), {int(row['n_components'])} component(s): "
            + ", ".join(f"{n} {pm(row[f'{n}_mean'], row[f'{n}_std'])}" for n in names
                        if not pd.isna(row[f"{n}_mean"]))
            for _, row in summary.iterrows()]


def separability_html(summary: pd.DataFrame) -> str:
    """The over_seeds table as an HTML block for the study page (empty when no member measured a component)."""
    if summary.empty:
        return ""
    e = html.escape
    names = COMPONENTS.names()
    head = "".join(f"<th>{e(n)}</th>" for n in ("model", "family", "n", "SSS", *names))
    body = "".join(
        "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (row["model"], row["family"], int(row["n"]))) +
        "".join(f"<td>{e(pm(row[f'{n}_mean'], row[f'{n}_std']))}</td>" for n in ("sss", *names)) + "</tr>"
        for _, row in summary.iterrows())
    return ("<h2 id='separability'>Skill separability (SSS)</h2><p class='small'>Per family: the score and each "
            "component in [0, 1], mean ± cross-seed std; SSS is the mean of the components the study's sweeps "
            "measured (docs/kinds.md)</p>"
            f"<table class='facts'><tr>{head}</tr>{body}</table>")
