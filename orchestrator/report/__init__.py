"""`report`: a sweep's FINISHED runs -> figures, ranked claim cards, one self-contained HTML page.

`write_report` reads the record (record.py; nothing is recomputed), builds the kind's section
(sections.SECTIONS; for a sweep of several models, scale.py's cross-model part and then each model's
section), writes `report.html` with every figure embedded plus the PNG files next to
it (html.py), and logs them under `report/` on the sweep's newest parent run. `compare.py` puts
two one-model sweeps' layer profiles on one depth axis.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.report.across import axis_to_split
from orchestrator.report.claims import ranked
from orchestrator.report.html import Report, write_page
from orchestrator.report.record import SweepRecord, log_report, read
from orchestrator.report.scale import models_section
from orchestrator.report.sections import build
from orchestrator.store import store_dir


def write_report(uri: str, name: str, out: Path | None = None, log: bool = True) -> Report:
    """The report of sweep `name`: out/report.html and out/<figure>.png (default out: mlruns/reports/<name>/)."""
    record = read(uri, name)
    several = len(record.models) > 1
    built = models_section(record) if several else build(record)
    in_parts = several or axis_to_split(record) is not None  # parts in order, each ranked already
    out = out or store_dir() / "reports" / name
    facts = _facts(record)
    made = write_page(out, "report.html", f"{record.name}: {built.title} report", facts,
                      [*record.notes, *built.notes], built.figures, built.cards if in_parts else ranked(built.cards),
                      tables=built.tables)
    if log and record.parent_id:
        log_report(uri, record.parent_id, [made.html, *made.pngs])
        made.logged_to = record.parent_id
    return made


def _facts(record: SweepRecord) -> list[tuple[str, str]]:
    frame = record.frame
    models = ", ".join(f"{m} ({record.layers_of(m)} layers)" for m in record.models)
    facts = [("models" if len(record.models) > 1 else "model", models), ("kind", record.kind),
             ("FINISHED grid points", str(len(frame))),
             ("seeds", ", ".join(map(str, sorted(frame["seed"].unique())))),
             ("families", ", ".join(sorted(map(str, frame["family"].unique()))))]
    for axis in record.axes:
        if axis not in ("seed", "family") and frame[axis].nunique() > 1:
            facts.append((axis, ", ".join(map(str, sorted(frame[axis].dropna().unique(), key=_order)))))
    return facts + [("parent run", record.parent_id or "–")]


def _order(value):
    return (0, float(value), "") if isinstance(value, (int, float, np.number)) else (1, 0, str(value))


__all__ = ["Report", "build", "read", "write_report"]
