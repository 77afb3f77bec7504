"""The sweep's progress: a bar with ETA on a terminal, a line every tenth of the points elsewhere (CI logs, pipes)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrialProgress:
    """A bar with ETA on a terminal; a line every tenth of the trials elsewhere (CI logs, pipes)."""

    def __init__(self, console: Console, name: str, total: int) -> None:
        self.console, self.name, self.total, self.count = console, name, total, 0
        self.start = time.monotonic()
        self.bar = None
        if console.is_terminal:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task(name, total=total)

    def __enter__(self) -> TrialProgress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def advance(self) -> None:
        self.count += 1
        if self.bar:
            self.bar.advance(self.task)
        elif self.count == self.total or self.count % max(1, self.total // 10) == 0:
            elapsed = time.monotonic() - self.start
            eta = elapsed / self.count * (self.total - self.count)
            self.console.print(f"{self.name}: {self.count}/{self.total} trials, {elapsed:.0f} s, eta {eta:.0f} s")
