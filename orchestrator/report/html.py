"""The report page: one self-contained HTML file (figures as base64 PNGs, cards, the grading rule) and its PNGs.

`write_page` writes `out/<page>` and `out/<figure>.png`; `screenshot` renders a page with headless
Chromium, as a person would see it.
"""
from __future__ import annotations

import base64
import html
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from interventions.registry import AtlasError
from orchestrator.numbers import fmt
from orchestrator.report import claims
from orchestrator.report.claims import ClaimCard
from orchestrator.report.figures import png
from orchestrator.report.sections import Shown


@dataclass
class Report:
    html: Path
    pngs: list[Path]
    cards: list[ClaimCard]  # ranked
    figures: list[Shown]
    logged_to: str | None = None  # parent run id the files were logged on


def write_page(out: Path, page: str, title: str, facts, notes, figures: list[Shown], cards: list[ClaimCard],
               extra: str = "", tables=()) -> Report:
    """`extra`: HTML placed after the facts (a study's key-metrics table); `tables`: (title, DataFrame) pairs shown
    after the notes."""
    out.mkdir(parents=True, exist_ok=True)
    pngs, blocks = [], []
    for shown in figures:
        data = png(shown.figure)
        path = out / f"{shown.id}.png"
        path.write_bytes(data)
        pngs.append(path)
        blocks.append(_figure_html(shown, data))
    body = [f"<h1>{_e(title)}</h1>", _facts_html(facts), *([extra] if extra else [])]
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    if tables:
        body.append("<h2>Tables</h2>" + "".join(_table_html(t, f) for t, f in tables))
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


def _table_html(title: str, frame) -> str:
    return f"<h3>{_e(title)}</h3>" + frame.to_html(index=False, classes="atlas", na_rep="–", border=0)


def _figure_html(shown: Shown, data: bytes) -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f"<figure id='fig-{_e(shown.id)}'><h3>{_e(shown.title)}</h3><img alt='{_e(shown.title)}' src='{src}'>"
            f"<figcaption>{_e(shown.caption)} <span class='small'>[{_e(shown.id)}.png]</span></figcaption></figure>")


def _card_html(rank: int, c: ClaimCard) -> str:
    control = (f"{_e(c.control)}: {fmt(c.control_mean)} ± {fmt(c.control_std, '.2g')}" if c.control
               else "none in this sweep")
    rows = [("figure", f"<a href='#fig-{_e(c.figure)}'>{_e(c.figure)}</a>"),
            ("seeds", f"n = {c.n_seeds}; {_e(c.agree)} support the claim"),
            ("mean ± std", f"{fmt(c.mean)} ± {fmt(c.std, '.2g')} <span class='small'>({_e(c.metric)}, std ddof=1 over "
                           "seeds)</span>"),
            ("control", control),
            ("effect size", f"{fmt(c.effect_size)} <span class='small'>({_e(c.effect_def)})</span>"),
            ("grade", f"{c.grade}: {_e(c.why)}")]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    caveats = "".join(f"<li>{_e(x)}</li>" for x in c.caveats)
    return (f"<div class='card grade-{c.grade}' id='card-{rank}'><p class='claim'><span class='badge'>{c.grade}</span> "
            f"#{rank} {_e(c.claim)}</p><table>{table}</table>"
            + (f"<ul class='caveats'>{caveats}</ul>" if caveats else "") + "</div>")


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
table.atlas td, table.atlas th { border: 1px solid #ddd; padding: 0.3em; } td.missing { color: #888; }
.claim { font-weight: bold; } pre.rule { white-space: pre-wrap; font-size: 0.85em; background: #f6f6f6; padding: 1em; }
"""
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
{body}
</body></html>
"""
