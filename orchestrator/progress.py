"""What a sweep is doing: a line per step before the first trial, then a bar (terminal, or an HTML bar in Jupyter) or a
line per 5 % (logs), with an ETA: the work left (each grid point weighted by the forwards it runs, as cost.py counts
them) over the rate of the recent half of the run, plus the end's fixed cost (cost.END)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.cost import END

STEP, SMALL = 0.05, 200  # off a terminal, a line per 5 % of the points (per 25 % below SMALL points)
WINDOW_S = 30.0  # the ETA's rate: over the last half of the time since the first result, at least this long


def duration(seconds: float) -> str:
    """'45 s', '12 min 5 s', '1 h 02 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@contextmanager
def phase(console: Console, text: str) -> Iterator[None]:
    """One step before the trials: a spinner on a terminal, a line elsewhere; how long it took, after."""
    start = time.monotonic()
    if console.is_terminal:
        with console.status(f"{text} ..."):
            yield
    else:
        console.print(f"{text} ...")
        yield
    console.print(f"{text}: {duration(time.monotonic() - start)}")


def point_cost(values: dict, layer_axes: tuple[str, ...], n_layers: int, prefix_reuse: bool,
               families: int = 1) -> float:
    """Relative work of a grid point: the decoder layers it runs (from its layer up, with prefix reuse) plus one
    for the unembedding and logging, times `families` for a knock-out (a negative strength of a kind that reads the
    other families: their eval items run too, as cost.work counts); a point without a layer axis runs the whole
    model."""
    layer = next((values[a] for a in layer_axes if isinstance(values.get(a), int)), None)
    rows = families if values.get("strength", 0) < 0 else 1
    if layer is None or not prefix_reuse:
        return (n_layers + 1.0) * rows
    return (n_layers - layer + 1.0) * rows


def eta(history: list[tuple[float, float]], work_total: float, end_s: float = 0.0) -> float | None:
    """Seconds left after the last of `history`'s (time, work done) marks, the first at the first result: the
    work left over the rate since the mark WINDOW_S or half the time since the first result ago (the longer; the
    recent rate follows a change of load, half the run keeps the packs' bursts from jolting it), plus `end_s`.
    None while less than a second of work has been timed."""
    if len(history) < 2:
        return None
    (t0, _), (now, done) = history[0], history[-1]
    since = now - max(WINDOW_S, (now - t0) / 2)
    start = next(((t, w) for t, w in reversed(history) if t <= since), history[0])
    seconds, work = now - start[0], done - start[1]
    if seconds < 1 or work <= 0:
        return None
    return max(0.0, work_total - done) / (work / seconds) + end_s


class NotebookBar:
    """A progress bar in a Jupyter cell: one HTML output updated in place (no terminal escape codes, no ipywidgets)."""

    def __init__(self, name: str, total: int, text: str) -> None:
        self.name, self.total, self.count, self.handle = name, total, 0, None
        self.text = text

    def html(self):
        from IPython.display import HTML
        from rich.markup import escape

        return HTML(f"<div style='font-family:monospace'><b>{escape(self.name)}</b> "
                    f"<progress value='{self.count}' max='{max(1, self.total)}' style='width:40%'></progress> "
                    f"{self.count}/{self.total} {escape(self.text)}</div>")

    def start(self) -> None:
        from IPython.display import display

        self.handle = display(self.html(), display_id=True)

    def update(self, count: int, text: str) -> None:
        self.count, self.text = count, text
        if self.handle is not None:
            self.handle.update(self.html())


class TrialProgress:
    """Points logged so far, and an ETA (`eta`): the work left over the recent rate of work, plus the end.

    The rate is measured from the first logged point on, so the start-up (actors loading the
    model, baselines) does not count as work; each point weighs `point_cost`, so that the cheap
    high-layer points at the end of a (seed, family) block do not make the ETA undershoot.
    """

    def __init__(self, console: Console, name: str, costs: dict[str, float], workers: int = 1) -> None:
        self.console, self.name, self.costs = console, name, costs
        self.total, self.count = len(costs), 0
        self.work_total, self.work_done = sum(costs.values()), 0.0
        self.mean_cost = self.work_total / max(1, self.total)
        self.start = time.monotonic()
        self.first: tuple[float, float] | None = None  # (time, work done) at the first logged point
        self.history: list[tuple[float, float]] = []  # (time, work done) at each logged point, from the first
        self.end_s = sum(END)  # the end's fixed cost on a free core (cost.py)
        self.step = STEP if self.total >= SMALL else 0.25
        self.next_line = self.step
        self.bar = None
        self.notebook = NotebookBar(name, self.total, "the actors load the model, build baselines") \
            if console.is_jupyter else None
        if console.is_terminal:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"), console=console)
            self.task = self.bar.add_task(f"{name}: {workers} actors load the model, build baselines",
                                          total=self.total, eta="after the first results")

    def __enter__(self) -> TrialProgress:
        if self.bar:
            self.bar.start()
        elif self.notebook:
            self.notebook.start()
        else:
            self.console.print(f"{self.name}: {self.total} points to run; the actors load the model once and build "
                               "baselines per (family, seed) before the first result")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def eta(self) -> float | None:
        """Seconds left, or None before the rate can be measured (a second pack must land after the first)."""
        return eta(self.history, self.work_total, self.end_s)

    def advance(self, trial_id: str | None = None) -> None:
        """One point logged (or given up on)."""
        now = time.monotonic()
        self.count += 1
        self.work_done += self.costs.get(trial_id, self.mean_cost)
        self.history.append((now, self.work_done))
        if self.first is None:
            self.first = (now, self.work_done)
            if not self.bar:
                self.console.print(f"{self.name}: first result after {duration(now - self.start)}")
        eta = self.eta()
        text = "after the first results" if eta is None else duration(eta)
        if self.bar:
            self.bar.update(self.task, advance=1, eta=text, description=self.name)
        elif self.notebook:
            self.notebook.update(self.count, f"{duration(now - self.start)}, eta {text}")
        elif self.count == self.total or self.count >= self.next_line * self.total:
            while self.next_line * self.total <= self.count:
                self.next_line += self.step
            self.console.print(f"{self.name}: {self.count}/{self.total} points ({100 * self.count / self.total:.0f} "
                               f"%), {duration(now - self.start)}, eta {text}")
