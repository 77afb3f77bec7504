"""`report STUDY`: one page for a study: the key-metrics table (atlas_table.py), then each member sweep's section."""
from __future__ import annotations

import html
from pathlib import Path

from orchestrator.report.atlas_table import table, table_html
from orchestrator.report.claims import ranked
from orchestrator.report.html import Report, write_page
from orchestrator.report.record import read
from orchestrator.report.scale import models_section, namespaced
from orchestrator.report.sections import build
from orchestrator.report.separability import from_records, over_seeds, separability_html
from orchestrator.store import store_dir
from orchestrator.view import url


def write_study_report(uri: str, name: str, out: Path | None = None) -> Report:
    """out/study.html (default out: mlruns/reports/<study>/) and its PNGs, from the members' FINISHED runs."""
    from orchestrator.study import study_members

    members = study_members(uri, name)
    records = [(experiment, read(uri, experiment, "STUDY"), member) for member, experiment in members]
    models = list(dict.fromkeys(m for _, record, _ in records for m in record.models))
    cells = table([(exp, rec, url(rec.experiment_id)) for exp, rec, _ in records], models)
    figures, cards, notes, listed = [], [], [], []
    for experiment, record, member in records:
        part = models_section(record) if len(record.models) > 1 else build(record)
        part = namespaced(part, member)
        figures += part.figures
        cards += ranked(part.cards)
        notes += part.notes
        first = f" · <a href='#fig-{html.escape(part.figures[0].id)}'>first figure</a>" if part.figures else ""
        listed.append(f"<li id='member-{html.escape(experiment)}'><b>{html.escape(experiment)}</b>: kind "
                      f"{html.escape(record.kind)}, {len(record.frame)} FINISHED grid points, models "
                      f"{html.escape(', '.join(record.models))}, parent run {html.escape(record.parent_id or '–')} · "
                      f"<a href='{html.escape(url(record.experiment_id))}'>MLflow</a>{first}</li>")
    sss = over_seeds(from_records(record for _, record, _ in records))
    extra = table_html(cells, models) + separability_html(sss) + "<h2>Sweeps</h2><ul>" + "".join(listed) + "</ul>"
    facts = [("study", name), ("sweeps", ", ".join(e for e, _, _ in records)), ("models", ", ".join(models))]
    out = out or store_dir() / "reports" / name
    made = write_page(out, "study.html", f"{name}: study report", facts, notes, figures, cards, extra)
    made.cells = cells
    return made
