"""Screen, then verify (DESIGN §6 attribution estimates): estimate every grid point, run exact trials only for the
top-k by |estimate| per (component, method) plus a seeded random sample of the rest, and say how well they agree.

The record: every grid point gets one FINISHED estimate run (role `estimate`, tag `orchestrator.estimate`, the
estimate's metrics); every point of the verify set gets one FINISHED exact run (role `trial`, tag
`orchestrator.verify` = top | random), exactly as an unscreened sweep logs it. Only exact runs are in the resume
ledger (`Tracker.finished`) and in the report's claims. On resume both ledgers are read back: estimates already
logged are not computed again, the verify set is chosen from the logged estimates (so it is the same set on every
invocation), and its finished points are not run again. The sweep holds one model, so "per (model, component,
method)" is per (component, method).
"""
from __future__ import annotations

import math
import random as random_module
from collections import defaultdict

import pandas as pd
from rich.console import Console
from rich.table import Table

from interventions.attribution import ESTIMATES
from orchestrator.grid import Point
from orchestrator.numbers import fmt
from orchestrator.spec import Sweep
from orchestrator.tracking import Tracker

Group = tuple[str, str]  # (component, method)


def group_of(values: dict) -> Group:
    return values["component"], values["method"]


def by_family(points: list[Point]) -> list[list[Point]]:
    """The points of each (seed, family), in grid order: one estimate trial each (one backward per run serves all)."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault((p.values["seed"], p.values["family"]), []).append(p)
    return list(groups.values())


def select(scores: dict[str, tuple[Group, float]], top: int, random: int, seed: int) -> dict[str, str]:
    """trial_id -> "top" | "random": per group, the `top` largest |score| (ties by trial_id) and a sample of `random`
    of the rest, seeded by (seed, group) only, so the same estimates always give the same set."""
    groups: dict[Group, list[str]] = defaultdict(list)
    for trial_id, (group, _) in scores.items():
        groups[group].append(trial_id)

    def size(trial_id: str) -> float:
        value = scores[trial_id][1]
        return abs(value) if not math.isnan(value) else -1.0  # an undefined estimate ranks last

    chosen: dict[str, str] = {}
    for group in sorted(groups):
        ranked = sorted(groups[group], key=lambda t: (-size(t), t))
        chosen.update({t: "top" for t in ranked[:top]})
        rest = sorted(ranked[top:])
        sample = random_module.Random(f"{seed}:{group[0]}:{group[1]}").sample(rest, min(random, len(rest)))
        chosen.update({t: "random" for t in sample})
    return chosen


class Screening:
    """One invocation of a screened sweep: what is estimated already, what to estimate, then what to verify."""

    def __init__(self, sweep: Sweep, points: list[Point], tracker: Tracker, done: dict[str, dict]) -> None:
        self.sweep, self.points, self.tracker, self.done = sweep, points, tracker, done
        self.settings = sweep.spec.screen
        self.estimates = tracker.estimated()
        self.missing = [p for p in points if p.trial_id not in self.estimates]
        self.verify: dict[str, str] = {} if self.missing else self._select(self.estimates)
        self.needed = bool(self.missing) or any(t not in done for t in self.verify)

    @property
    def tags(self) -> dict[str, dict[str, str]]:
        """The exact runs' own tag: why the screen verifies them."""
        return {trial_id: {"verify": why} for trial_id, why in self.verify.items()}

    def _select(self, estimates: dict[str, dict]) -> dict[str, str]:
        score = ESTIMATES.get(self.settings.estimate).score
        scores = {p.trial_id: (group_of(p.values), float(estimates[p.trial_id].get(score, math.nan)))
                  for p in self.points if p.trial_id in estimates}
        return select(scores, self.settings.verify_top, self.settings.verify_random, self.settings.seed)

    def select(self, outcome, console: Console, failed: list[str]) -> list[Point]:
        """After the estimate round: the verify set's points still to run (none if estimating was interrupted).

        Fills in the outcome's counts: the points to have are the verify set, plus the points whose estimate failed
        for good (counted as failed: a grid point with neither an estimate nor an exact run)."""
        fresh = len(self.missing)
        if self.missing:
            self.estimates = self.tracker.estimated()
        lost = [p.trial_id for p in self.points if p.trial_id not in self.estimates]
        if set(lost) - set(failed):  # interrupted before every estimate was logged: rerun to continue
            return []
        self.verify = self._select(self.estimates)
        todo = [p for p in self.points if p.trial_id in self.verify and p.trial_id not in self.done]
        outcome.n_points, outcome.skipped = len(self.verify) + len(lost), len(self.verify) - len(todo)
        outcome.failed += lost
        self.tracker.log_summary(outcome.parent_run_id, {"to_run": len(todo), "estimated": len(self.estimates),
                                                         "verify_set": len(self.verify)})  # metrics: a rerun continues
        s = self.settings
        console.print(f"{self.sweep.spec.name}: {len(self.points)} grid points estimated by {s.estimate} "
                      f"({fresh} now); verifying {len(self.verify)} exactly (top {s.verify_top} and {s.verify_random} "
                      f"random per component/method), {outcome.skipped} already finished, running {len(todo)}")
        return todo

    def table(self) -> pd.DataFrame:
        """One row per estimated grid point: its axes, the estimate's metrics, the exact ld_drop (NaN: not run)."""
        exact = self.tracker.finished()
        rows = [{**p.values, **self.estimates[p.trial_id], "ld_drop": exact.get(p.trial_id, {}).get("ld_drop"),
                 "verify": self.verify.get(p.trial_id, "")} for p in self.points if p.trial_id in self.estimates]
        return pd.DataFrame(rows)

    def report(self, console: Console, parent_id: str) -> None:
        """Print (and log on the parent run) how the screen agrees with exact patching per (component, method)."""
        from orchestrator.report.screen import agreement

        if not self.verify:
            return
        stats = agreement(self.table())
        view = Table(title=f"screen ({self.settings.estimate}) vs exact ld_drop per component / method",
                     title_justify="left")
        for name in ("component", "method", "points", "verified", "Spearman", "smallest exact |shift| in top-k",
                     "largest exact |shift| outside top-k (rank)"):
            view.add_column(name)
        metrics = {}
        for _, r in stats.iterrows():
            outside = "–" if pd.isna(r["outside_max"]) else f"{fmt(r['outside_max'])} (#{int(r['outside_rank'])})"
            view.add_row(r["component"], r["method"], str(r["points"]), str(r["verified"]), fmt(r["spearman"], ".2f"),
                         fmt(r["inside_min"]), outside)
            if not pd.isna(r["spearman"]):
                metrics[f"screen_spearman_{r['component']}_{r['method']}"] = r["spearman"]
        console.print(view)
        if metrics:
            self.tracker.log_summary(parent_id, metrics)
