"""Cross-seed aggregation (DESIGN §8): group finished grid points by every param but seed; mean, std, n, min, max."""
from __future__ import annotations

import math

import pandas as pd
from rich.table import Table

from interventions.kinds import Kind
from orchestrator.numbers import pm

STATS = ("mean", "std", "n", "min", "max")


def aggregate(rows: list[dict], group_by: list[str], metrics: list[str], primary: str) -> pd.DataFrame:
    """One row per group; `<metric>_<stat>` columns; std has ddof=1; strongest |primary mean| first."""
    frame = pd.DataFrame(rows)
    for column in group_by:  # an axis that no grid point uses (adapter's keep_rank without rank_truncation)
        if column not in frame:
            frame[column] = None
    for metric in metrics:
        if metric not in frame:
            frame[metric] = float("nan")
    named = {}
    for metric in metrics:
        named.update({
            f"{metric}_mean": (metric, "mean"),
            f"{metric}_std": (metric, lambda s: s.std(ddof=1)),
            f"{metric}_n": (metric, "count"),
            f"{metric}_min": (metric, "min"),
            f"{metric}_max": (metric, "max"),
        })
    table = frame.groupby(group_by, sort=False, dropna=False).agg(**named).reset_index()
    order = table[f"{primary}_mean"].abs().sort_values(ascending=False, na_position="last").index
    return table.loc[order].reset_index(drop=True)


def beside_control(table: pd.DataFrame, group_by: list[str], kind: Kind) -> pd.DataFrame:
    """With the kind's `control` (steering: the random vector): each row's control value, i.e. the row whose axis
    values equal its own with the control's put in (`<primary>_control_mean`, `_control_std`), and the effect
    beyond it (`<primary>_beyond` = mean - control mean). Sorted by |beyond|, largest first; rows without a
    control (the control's own rows, the prompting baseline) follow by |mean|."""
    if not kind.control or not len(table):
        return table
    primary, axes = kind.primary, list(kind.control)
    is_control = pd.Series(all(a in table for a in axes), index=table.index)
    for axis, value in kind.control.items():
        if axis in table:
            is_control &= table[axis] == value
    keys = [c for c in group_by if c not in axes]
    control = table[is_control][keys + [f"{primary}_mean", f"{primary}_std"]].rename(
        columns={f"{primary}_mean": f"{primary}_control_mean", f"{primary}_std": f"{primary}_control_std"})
    out = table.assign(_order=range(len(table))).merge(control, on=keys, how="left").sort_values("_order")
    out.loc[is_control.to_numpy(), [f"{primary}_control_mean", f"{primary}_control_std"]] = float("nan")
    out[f"{primary}_beyond"] = out[f"{primary}_mean"] - out[f"{primary}_control_mean"]
    beyond = out[f"{primary}_beyond"].abs()
    out = out.assign(_none=beyond.isna(), _size=beyond.fillna(out[f"{primary}_mean"].abs()))
    out = out.sort_values(["_none", "_size", "_order"], ascending=[True, False, True], na_position="last")
    return out.drop(columns=["_order", "_none", "_size"]).reset_index(drop=True)


def _axis_cell(value) -> str:
    """An axis value as written: 4 not 4.0 (a column with absent values is float), '–' where a point has no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render(table: pd.DataFrame, axes: list[str], kind: Kind, top: int, title: str) -> Table:
    """The first `top` groups as a rich table: varying axes, then mean ± std of the kind's primary and shown metrics."""
    primary = kind.primary
    shown_axes = [a for a in axes if a in table and table[a].nunique() > 1] or axes[:1]
    shown = [primary, *[m for m in kind.shown if m != primary]]
    out = Table(title=title, title_justify="left", caption="cells: mean ± std (ddof=1) over seeds",
                caption_justify="left")
    for name in shown_axes:
        out.add_column(name, justify="right" if table[name].dtype.kind in "if" else "left")
    out.add_column("n", justify="right")
    control = f"{primary}_control_mean" in table  # the kind declares a control: its value beside each row
    for metric in shown:
        out.add_column(metric, justify="right")
        if control and metric == primary:
            out.add_column(f"control ({_control_text(kind)})", justify="right")
    for _, row in table.head(top).iterrows():
        cells = [_axis_cell(row[a]) for a in shown_axes] + [str(int(row[f"{primary}_n"]))]
        for m in shown:
            cells.append(pm(row[f"{m}_mean"], row[f"{m}_std"]))
            if control and m == primary:
                cells.append(pm(row[f"{m}_control_mean"], row[f"{m}_control_std"]))
        out.add_row(*cells)
    return out


def _control_text(kind: Kind) -> str:
    return ", ".join(f"{k}={v}" for k, v in kind.control.items())
