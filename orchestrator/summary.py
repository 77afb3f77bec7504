"""End of a sweep: the cross-seed table of every finished grid point and the kind's own summary, saved and logged."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from rich.console import Console

from orchestrator.aggregate import aggregate, render
from orchestrator.grid import Point, axis_order
from orchestrator.spec import Sweep
from orchestrator.tracking import Tracker


def summarise(sweep: Sweep, tracker: Tracker, points: list[Point], parent: str, console: Console, top: int,
              out_dir: Path | None) -> Path | None:
    """Aggregate every finished grid point across seeds: print, write Parquet, log as parent artifacts."""
    finished = tracker.finished()
    have = [p for p in points if p.trial_id in finished]
    if not have:
        return None
    rows = [{"model": sweep.spec.model, "kind": sweep.kind.name, **_hashable(p.values),
             **finished[p.trial_id]} for p in have]
    group_by = ["model", "kind", *[a for a in axis_order(sweep) if a != "seed"]]
    table = aggregate(rows, group_by, list(sweep.kind.metrics), sweep.kind.primary)
    out_dir = out_dir or Path.cwd() / "mlruns" / "reports" / sweep.spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "aggregate.parquet"
    table.to_parquet(path, index=False)
    text = out_dir / "aggregate.txt"
    text.write_text(table.to_string(index=False), encoding="utf-8")
    tracker.log_outputs(parent, [path, text])
    axes = [a for a in group_by if a not in ("model", "kind")]
    title = (f"{sweep.spec.name}: {len(table)} groups over seeds {sweep.axes['seed']} "
             f"(strongest |{sweep.kind.primary}| first)")
    console.print(render(table, axes, sweep.kind, top, title))
    if len(table) > top:
        console.print(f"... {len(table) - top} more groups in the table file")
    console.print(f"aggregate table: {path}  (also an artifact of parent run {parent})")
    best = table.iloc[0][f"{sweep.kind.primary}_mean"]
    if not math.isnan(best):
        tracker.log_summary(parent, {f"best_{sweep.kind.primary}_mean": best, "groups": len(table),
                                     "finished_points": len(have)})
    from orchestrator.report.sections import SECTIONS  # the report side: matplotlib, only when a sweep ends

    entry = SECTIONS.get(sweep.kind.name) if sweep.kind.name in SECTIONS else None
    if sweep.spec.screen is not None:  # a screen's exact points are a biased sample: no hub tables from them
        entry = None
    if entry is not None and entry.summary is not None:
        summary = entry.summary(pd.DataFrame(rows))
        files = []
        for name, frame in summary.tables.items():
            files.append(out_dir / f"{name}.parquet")
            frame.to_parquet(files[-1], index=False)
        tracker.log_outputs(parent, files)
        if summary.metrics:
            tracker.log_summary(parent, summary.metrics)
        for view in summary.views:
            console.print(view)
    return path


def _hashable(values: dict) -> dict:
    """List-valued axes (skip sets) as their JSON text, so that they can be grouped."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in values.items()}
