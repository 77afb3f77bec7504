"""`report` and `compare`: a sweep's FINISHED runs -> figures, ranked claim cards, one self-contained HTML page.

`write_report` reads the record (record.py; nothing is recomputed), builds the kind's section
(sections.SECTIONS), writes `report.html` with every figure embedded as a base64 PNG plus the
PNG files next to it, and logs them under `report/` on the sweep's newest parent run.
`write_compare` puts two sweeps' layer profiles on a depth axis (layer / n_layers).
`screenshot` renders a page with headless Chromium, as a person would see it.
"""
from __future__ import annotations

import base64
import html
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from interventions.registry import AtlasError
from orchestrator import claims
from orchestrator.atlas import mode_and_std
from orchestrator.claims import ClaimCard, Evidence, card, fmt, ranked
from orchestrator.figures import depth_compare, png
from orchestrator.record import SweepRecord, load_record, log_report
from orchestrator.sections import SECTIONS, Section, Shown, location_evidence, over_seeds
from orchestrator.tracking import store_dir


@dataclass
class Report:
    html: Path
    pngs: list[Path]
    cards: list[ClaimCard]  # ranked
    figures: list[Shown]
    logged_to: str | None = None  # parent run id the files were logged on


def read(uri: str, name: str, argument: str = "SWEEP_NAME") -> SweepRecord:
    def curves_for(kind: str) -> tuple[str, ...]:
        return SECTIONS.get(kind).curves if kind in SECTIONS else ()

    return load_record(uri, name, argument, curves_for)


def build(record: SweepRecord) -> Section:
    if record.kind not in SECTIONS:
        raise AtlasError(f"SWEEP_NAME: no report for experiment kind {record.kind!r} (reports exist for: "
                         f"{', '.join(SECTIONS.names())})")
    return SECTIONS.get(record.kind).build(record)


def write_report(uri: str, name: str, out: Path | None = None, log: bool = True) -> Report:
    """The report of sweep `name`: out/report.html and out/<figure>.png (default out: mlruns/reports/<name>/)."""
    record = read(uri, name)
    built = build(record)
    out = out or store_dir() / "reports" / name
    facts = _facts(record)
    made = _write(out, "report.html", f"{record.name}: {built.title} report", facts, [*record.notes, *built.notes],
                  built.figures, ranked(built.cards))
    if log and record.parent_id:
        log_report(uri, record.parent_id, [made.html, *made.pngs])
        made.logged_to = record.parent_id
    return made


def _facts(record: SweepRecord) -> list[tuple[str, str]]:
    frame = record.frame
    facts = [("model", f"{record.model} ({record.n_layers} layers)"), ("kind", record.kind),
             ("FINISHED grid points", str(len(frame))),
             ("seeds", ", ".join(map(str, sorted(frame["seed"].unique())))),
             ("families", ", ".join(sorted(map(str, frame["family"].unique()))))]
    for axis in record.axes:
        if axis not in ("seed", "family") and frame[axis].nunique() > 1:
            facts.append((axis, ", ".join(map(str, sorted(frame[axis].dropna().unique(), key=_order)))))
    return facts + [("parent run", record.parent_id or "–")]


def _order(value):
    return (0, float(value), "") if isinstance(value, (int, float, np.number)) else (1, 0, str(value))


def _write(out: Path, page: str, title: str, facts, notes, figures: list[Shown], cards: list[ClaimCard]) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    pngs, blocks = [], []
    for shown in figures:
        data = png(shown.figure)
        path = out / f"{shown.id}.png"
        path.write_bytes(data)
        pngs.append(path)
        blocks.append(_figure_html(shown, data))
    body = [f"<h1>{_e(title)}</h1>", _facts_html(facts)]
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    body += ["<h2>Figures</h2>", *blocks, "<h2 id='claims'>Claim cards (ranked)</h2>"]
    body += [_card_html(i, c) for i, c in enumerate(cards, 1)] or ["<p>No claim could be stated from this sweep.</p>"]
    rule = claims.__doc__.split("\n\n", 1)[1]
    body.append(f"<h2>How cards are graded</h2><pre class='rule'>{_e(rule)}</pre>")
    body.append(f"<p class='small'>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from the MLflow record; "
                "every number is read from FINISHED runs.</p>")
    path = out / page
    path.write_text(PAGE.format(title=_e(title), style=STYLE, body="\n".join(body)), encoding="utf-8")
    return Report(path, pngs, cards, figures)


def _e(text) -> str:
    return html.escape(str(text))


def _facts_html(facts) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return f"<table class='facts'>{rows}</table>"


def _figure_html(shown: Shown, data: bytes) -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f"<figure id='fig-{_e(shown.id)}'><h3>{_e(shown.title)}</h3><img alt='{_e(shown.title)}' src='{src}'>"
            f"<figcaption>{_e(shown.caption)} <span class='small'>[{_e(shown.id)}.png]</span></figcaption></figure>")


def _card_html(rank: int, c: ClaimCard) -> str:
    control = (f"{_e(c.control)}: {fmt(c.control_mean)} ± {fmt(c.control_std, 2)}" if c.control
               else "none in this sweep")
    rows = [("figure", f"<a href='#fig-{_e(c.figure)}'>{_e(c.figure)}</a>"),
            ("seeds", f"n = {c.n_seeds}; {_e(c.agree)} support the claim"),
            ("mean ± std", f"{fmt(c.mean)} ± {fmt(c.std, 2)} <span class='small'>({_e(c.metric)}, std ddof=1 over "
                           "seeds)</span>"),
            ("control", control),
            ("effect size", f"{fmt(c.effect_size)} <span class='small'>({_e(c.effect_def)})</span>"),
            ("grade", f"{c.grade}: {_e(c.why)}")]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    caveats = "".join(f"<li>{_e(x)}</li>" for x in c.caveats)
    return (f"<div class='card grade-{c.grade}' id='card-{rank}'><p class='claim'><span class='badge'>{c.grade}</span> "
            f"#{rank} {_e(c.claim)}</p><table>{table}</table>"
            + (f"<ul class='caveats'>{caveats}</ul>" if caveats else "") + "</div>")


def write_compare(uri: str, name_a: str, name_b: str, out: Path | None = None) -> Report:
    """Two sweeps of one kind: their layer profiles against depth = layer / n_layers, hubs as depth fractions."""
    records = [read(uri, name_a, "SWEEP_A"), read(uri, name_b, "SWEEP_B")]
    a, b = records
    if a.kind != b.kind:
        raise AtlasError(f"SWEEP_B: {b.name!r} is a sweep of kind {b.kind} and {a.name!r} of kind {a.kind}; "
                         "compare needs two sweeps of one kind")
    entry = SECTIONS.get(a.kind) if a.kind in SECTIONS else None
    if entry is None or entry.profile is None:
        raise AtlasError(f"SWEEP_A: no layer profile to compare for experiment kind {a.kind!r}")
    profiles, stats, hubs, cards, facts = {}, {}, {}, [], []
    for rec in records:
        prof = entry.profile(rec)
        label = f"{rec.name} ({rec.model})"
        table = over_seeds(prof.frame, ["layer"], "effect")
        stats[label] = table.assign(depth=table["layer"] / rec.n_layers)
        mode = mode_and_std(prof.hubs)[0]
        hubs[label], profiles[rec.name] = mode / rec.n_layers, prof
        cards.append(_hub_card(rec, prof, mode))
        facts.append((label, f"{rec.n_layers} layers; {prof.marker}: L{mode} = depth {mode / rec.n_layers:.2f} "
                             f"(per seed: {', '.join(f'L{int(h)}' for h in prof.hubs)})"))
    moved = _moved_card(records, profiles)
    notes = [*a.notes, *b.notes]
    if moved:
        cards.append(moved)
    else:
        notes.append(f"{profiles[a.name].marker} sits at the same mean depth in both sweeps: no card on its move")
    shown = Shown("compare_depth", f"{profiles[a.name].label} against depth",
                  "Left panels: each sweep's mean over seeds (band ± cross-seed std) with its marked layer; right: both "
                  "scaled to their own peak, on one depth axis (layer / n_layers).",
                  depth_compare(stats, hubs, profiles[a.name].label))
    out = out or store_dir() / "reports" / f"compare_{a.name}_vs_{b.name}"
    return _write(out, "compare.html", f"compare {a.name} vs {b.name} ({a.kind})", facts,
                  notes, [shown], ranked(cards))


def _hub_card(rec: SweepRecord, prof, mode: int) -> ClaimCard:
    ev = location_evidence(prof.frame, mode)
    ev = Evidence(ev.values, {s: int(prof.hubs.get(s, -1)) == mode for s in ev.values}, ev.control, 1)
    values = pd.Series(ev.values)
    return card(f"{rec.name} ({rec.model}, {rec.n_layers} layers): {prof.marker} is L{mode}, depth "
                f"{mode / rec.n_layers:.2f} ({prof.label} {fmt(values.mean())} ± {fmt(values.std(ddof=1), 2)}).",
                "compare_depth", prof.label, ev, "the median layer of the same profile, per seed",
                layer=mode, depth=mode / rec.n_layers)


def _moved_card(records: list[SweepRecord], profiles: dict) -> ClaimCard | None:
    """'The marked layer sits deeper (shallower) in B than in A': B's per-seed depths against A's as the control."""
    a, b = records
    depth_a = {int(s): h / a.n_layers for s, h in profiles[a.name].hubs.items()}
    depth_b = {int(s): h / b.n_layers for s, h in profiles[b.name].hubs.items()}
    mean_a, mean_b = sum(depth_a.values()) / len(depth_a), sum(depth_b.values()) / len(depth_b)
    if mean_a == mean_b:
        return None
    sign = 1 if mean_b > mean_a else -1
    ev = Evidence(depth_b, {s: sign * (d - mean_a) > 0 for s, d in depth_b.items()}, depth_a, sign)
    return card(f"{profiles[b.name].marker.capitalize()} sits {'deeper' if sign > 0 else 'shallower'} in {b.name} "
                f"({b.model}): depth {mean_b:.2f} against {mean_a:.2f} in {a.name} ({a.model}).", "compare_depth",
                "depth of the marked layer per seed", ev, f"{a.name}'s depths, per seed",
                ["seeds of the two sweeps are not paired: the control is the other sweep's spread"])


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 5000, timeout: int = 180) -> Path:
    """Render `page` with headless Chromium (Debian's `chromium`) to a PNG of width x height pixels."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise AtlasError("screenshot: no chromium on PATH (Debian: apt-get install chromium)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
           f"--screenshot={out}", f"--window-size={width},{height}", Path(page).resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    return out


STYLE = """
body { font-family: sans-serif; max-width: 1300px; margin: 1em auto; color: #222; }
table.facts th { text-align: left; padding-right: 1em; vertical-align: top; }
figure { margin: 1.5em 0; border-top: 1px solid #ddd; } figure img { max-width: 100%; }
figcaption, .small { font-size: 0.85em; color: #555; }
.card { border: 1px solid #ccc; border-left: 8px solid #999; padding: 0.4em 1em; margin: 0.8em 0; }
.card table th { text-align: left; padding-right: 1em; font-weight: normal; color: #555; vertical-align: top; }
.grade-A { border-left-color: #2a7d2a; } .grade-B { border-left-color: #c08a00; } .grade-C { border-left-color: #a33; }
.badge { font-weight: bold; padding: 0 0.4em; border: 1px solid #333; }
.claim { font-weight: bold; } pre.rule { white-space: pre-wrap; font-size: 0.85em; background: #f6f6f6; padding: 1em; }
"""
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
{body}
</body></html>
"""
