"""A screened ablation sweep in the report: estimates beside exact results, their agreement, cards on exact points.

Pure functions on DataFrames. A table row is one grid point: its axes, `ld_drop_estimate` and `ld_shift_estimate`
(interventions/attribution.py), the exact `ld_drop` (NaN where the point was not verified) and `verify` (top,
random, or "" for estimate-only points). The screen ranks by |shift| (LD_out - LD of the run patched); the exact
shift is gap - ld_drop, where the gap (mean LD_clean - mean LD of that run: 0 for the clean-run methods) is the
estimate row's ld_drop_estimate + ld_shift_estimate, computed exactly, not estimated.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from interventions.ablation import effect_metric
from interventions.metrics import spearman
from orchestrator.numbers import fmt
from orchestrator.report.claims import ClaimCard, Evidence, card
from orchestrator.report.figures import new_figure
from orchestrator.report.record import SweepRecord

AXES = ["seed", "family", "component", "layer", "head", "method"]


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    if "head" not in out:
        out["head"] = -1
    out["head"] = out["head"].astype("Float64").fillna(-1).astype(int)
    return out


def joined(record: SweepRecord) -> pd.DataFrame:
    """Every estimated point with its exact ld_drop, recovery and verify tag where it was verified."""
    exact = _keyed(record.frame)
    keep = [c for c in ("ld_drop", "recovery", "verify") if c in exact]
    table = _keyed(record.estimates).drop(columns=["verify", "run_id"], errors="ignore")
    table = table.merge(exact[AXES + keep], on=AXES, how="left")
    table["verify"] = table["verify"].fillna("") if "verify" in table else ""
    return table


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Adds rank (1 = largest |estimated shift| in its (component, method)), exact_shift and its size."""
    table = table.copy()
    size = table["ld_shift_estimate"].abs().fillna(-1.0)
    table["rank"] = size.groupby([table["component"], table["method"]]).rank(ascending=False, method="first")
    table["rank"] = table["rank"].astype(int)
    table["exact_shift"] = table["ld_drop_estimate"] + table["ld_shift_estimate"] - table["ld_drop"]
    return table


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per (component, method): points, verified, Spearman(estimate, exact ld_drop) on the verified points, the
    smallest exact |shift| inside the top-k, the largest outside it (and its rank), recall@k when every point is
    exact. k = the number of points verified as top."""
    rows = []
    table = ranked(table)
    for (component, method), part in table.groupby(["component", "method"], sort=False):
        done = part.dropna(subset=["ld_drop"])
        k = int((part["verify"] == "top").sum()) or len(done)
        inside, outside = done[done["rank"] <= k], done[done["rank"] > k]
        out_max = outside.loc[outside["exact_shift"].abs().idxmax()] if len(outside) else None
        recall = float("nan")
        if len(done) == len(part) and k:
            exact_top = set(part["exact_shift"].abs().nlargest(k).index)
            recall = len(exact_top & set(part.index[part["rank"] <= k])) / k
        rows.append({"component": component, "method": method, "points": len(part), "verified": len(done), "k": k,
                     "spearman": spearman(done["ld_drop_estimate"].tolist(), done["ld_drop"].tolist())
                     if len(done) > 2 else float("nan"),
                     "inside_min": inside["exact_shift"].abs().min() if len(inside) else float("nan"),
                     "outside_max": abs(out_max["exact_shift"]) if out_max is not None else float("nan"),
                     "outside_rank": out_max["rank"] if out_max is not None else float("nan"),
                     "recall_at_k": recall})
    return pd.DataFrame(rows)


def notes(stats: pd.DataFrame) -> list[str]:
    lines = []
    for _, r in stats.iterrows():
        line = (f"screen {r['component']}/{r['method']}: Spearman(estimate, exact ld_drop) {fmt(r['spearman'], '.2f')} "
                f"on {r['verified']} verified of {r['points']} points; smallest exact |LD shift| in the top-{r['k']}: "
                f"{fmt(r['inside_min'])}")
        if not pd.isna(r["outside_max"]):
            line += f"; largest outside it: {fmt(r['outside_max'])} (ranked #{int(r['outside_rank'])} by the estimate)"
        if not pd.isna(r["recall_at_k"]):
            line += f"; recall@{r['k']} {r['recall_at_k']:.2f}"
        lines.append(line)
    return lines


def figure(table: pd.DataFrame) -> Figure:
    """Per (component, method): |LD shift| against the screen's rank; hollow grey: estimated, filled: exact."""
    table = ranked(table)
    groups = list(table.groupby(["component", "method"], sort=False))
    fig, axes = new_figure(len(groups), cols=min(3, len(groups)))
    for ax, ((component, method), part) in zip(axes, groups):
        part = part.sort_values("rank")
        ax.scatter(part["rank"], part["ld_shift_estimate"].abs(), s=14, facecolors="none", edgecolors="grey",
                   label="estimate", gid="estimated")
        done = part.dropna(subset=["ld_drop"])
        for why, color in (("top", "tab:red"), ("random", "tab:blue"), ("", "tab:green")):
            rows = done[done["verify"] == why]
            if len(rows):
                ax.scatter(rows["rank"], rows["exact_shift"].abs(), s=18, color=color, gid="exact",
                           label=f"exact ({why or 'verified'})")
        k = int((part["verify"] == "top").sum())
        if k:
            ax.axvline(k + 0.5, color="black", linestyle="--", linewidth=1, gid="top_k")
        ax.set_title(f"{component} / {method}")
        ax.set_xlabel("rank by |estimated LD shift|")
        ax.set_ylabel("|LD shift|")
        ax.legend(fontsize=7)
    return fig


def complete(record: SweepRecord) -> SweepRecord:
    """The record with only the (component, method) panels whose every estimated point has an exact run: layer
    profiles and hubs of the ablation section need every layer, not the screen's biased sample."""
    table = joined(record)
    full = table.groupby(["component", "method"])["ld_drop"].apply(lambda s: s.notna().all())
    keep = {pair for pair, ok in full.items() if ok}
    pick = [(c, m) in keep for c, m in zip(record.frame["component"], record.frame["method"])]
    return replace(record, frame=record.frame[pick].reset_index(drop=True))


def cards(table: pd.DataFrame, n_layers: int) -> list[ClaimCard]:
    """Per (component, method): the verified site with the largest exact effect. Every number is an exact run's:
    per seed, the family mean of its exact ld_drop (recovery for denoising); a seed agrees when the site is its own
    largest exact |LD shift| among the verified points. No control: at best B."""
    out = []
    table = ranked(table).dropna(subset=["ld_drop"])
    for (component, method), part in table.groupby(["component", "method"], sort=False):
        metric = "recovery" if effect_metric(method) == "recovery" and "recovery" in part else "ld_drop"
        best = part.loc[part["exact_shift"].abs().idxmax()]
        site = (part["layer"] == best["layer"]) & (part["head"] == best["head"])
        values = part[site].groupby("seed")[metric].mean()
        if values.isna().all():
            continue
        agree = {int(s): bool(((rows["layer"] == best["layer"]) & (rows["head"] == best["head"]))
                              .loc[rows["exact_shift"].abs().idxmax()]) for s, rows in part.groupby("seed")}
        direction = 1 if values.mean() >= 0 else -1
        ev = Evidence({int(s): float(v) for s, v in values.items()}, {s: agree.get(s, False) for s in
                                                                       map(int, values.index)}, None, direction)
        where = f"L{int(best['layer'])}" + (f".h{int(best['head'])}" if best["head"] >= 0 else "")
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        out.append(card(
            f"{component}/{method}: {where} ({best['layer'] / n_layers:.0%} depth) has the largest exact effect of "
            f"the {len(part)} verified points: {metric} {fmt(values.mean())} ± {fmt(std, '.2g')} over "
            f"{len(values)} seeds (family mean); the screen ranked it #{int(best['rank'])}.", "screen", metric, ev,
            caveats=["screened sweep: only the verified points were run exactly; unverified points are not compared"],
            layer=int(best["layer"]), head=int(best["head"]) if best["head"] >= 0 else None))
    return out
