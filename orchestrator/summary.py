"""End of a sweep: the cross-seed table of every finished grid point and the kind's own summary, saved and logged."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console

from orchestrator.aggregate import aggregate, beside_control, render
from orchestrator.grid import Point, axis_order, table_values
from orchestrator.spec import Sweep
from orchestrator.sweepfiles import Gathered, write_sweep_files
from orchestrator.tracking import Tracker


def summarise(sweep: Sweep, tracker: Tracker, points: list[Point], parent: str | None, console: Console, top: int,
              out_dir: Path | None, gathered: Gathered | None = None) -> Path | None:
    """Aggregate every finished grid point across seeds: print, write Parquet, log as parent artifacts (if a parent,
    with the sweep's items.parquet and vectors.safetensors when its trials send per-item values or tensors)."""
    finished = tracker.finished()
    have = [p for p in points if p.trial_id in finished]
    if not have:
        return None
    rows = [{"model": p.model, "kind": sweep.kind.name, **values, **finished[p.trial_id]}
            for p, values in zip(have, table_values(have))]
    group_by = ["model", "kind", *[a for a in axis_order(sweep) if a not in ("seed", "model")]]
    table = beside_control(aggregate(rows, group_by, list(sweep.kind.metrics), sweep.kind.primary), group_by,
                           sweep.kind)
    out_dir = out_dir or Path.cwd() / "mlruns" / "reports" / sweep.spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "aggregate.parquet"
    table.to_parquet(path, index=False)
    text = out_dir / "aggregate.txt"
    text.write_text(table.to_string(index=False), encoding="utf-8")
    if parent:
        tracker.log_outputs(parent, [path, text])
        write_sweep_files(sweep, tracker, points, set(finished), parent, gathered or Gathered(), out_dir,
                          console.print)
    axes = [a for a in group_by if a != "kind" and (a != "model" or "model" in sweep.axes)]
    order = (f"largest |{sweep.kind.primary} - control| first" if f"{sweep.kind.primary}_beyond" in table
             else f"strongest |{sweep.kind.primary}| first")
    title = f"{sweep.spec.name}: {len(table)} groups over seeds {sweep.axes['seed']} ({order})"
    console.print(render(table, axes, sweep.kind, top, title))
    if len(table) > top:
        console.print(f"... {len(table) - top} more groups in the table file")
    console.print(f"aggregate table: {path}" + (f"  (also an artifact of parent run {parent})" if parent else ""))
    best = table.iloc[0][f"{sweep.kind.primary}_mean"]
    if parent and not math.isnan(best):
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
        if parent:
            tracker.log_outputs(parent, files)
        if parent and summary.metrics:
            tracker.log_summary(parent, summary.metrics)
        for view in summary.views:
            console.print(view)
    return path
