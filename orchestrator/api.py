"""The Python API: `oc.sweep(spec)` runs a sweep as `python -m orchestrator sweep` does, `oc.load(name)` reads a
finished one; both return an `Atlas`, whose methods read the sweep's MLflow record (docs/python.md).

    import orchestrator as oc
    atlas = oc.sweep("sweeps/smoke.yaml")        # a path, a YAML string or a dict
    atlas.table()                                # the cross-seed table (pandas)
    oc.load("smoke").figure("heatmap")           # a report figure, drawn inline in Jupyter

The CLI's `sweep` command validates and dry-runs itself, then calls `run` below, the same function `sweep` calls.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from interventions.registry import AtlasError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from rich.console import Console
    from torch import Tensor

    from orchestrator.report.html import Report
    from orchestrator.runner import Outcome
    from orchestrator.spec import Sweep
    from orchestrator.vectors import Saved

MAX_TRIALS = 20_000  # a grid larger than this needs yes=True (--yes): a typo in an axis should not start a week of work


def load_spec(spec: str | Path | dict, base_dir: str | Path | None = None
              ) -> tuple[Sweep, tempfile.TemporaryDirectory | None]:
    """A spec given as a path, a YAML string or a dict, validated (SpecError, one line, naming the field).

    A path's relative paths (JSONL families, adapters) resolve against the spec's folder, as on the command line; a
    string's or a dict's against `base_dir`, by default the current directory. A string or dict is written to a
    temporary `<name>.yaml` (logged on the parent run like a spec file); the folder is returned to keep it alive."""
    import yaml

    from orchestrator.spec import SpecError, load_sweep

    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec
                                  and spec.strip().endswith((".yaml", ".yml"))):  # a file: as on the command line
        return load_sweep(spec, base_dir), None
    if isinstance(spec, str):
        try:
            raw = yaml.safe_load(spec)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "yaml"
            raise SpecError(f"spec: {where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if isinstance(raw, str):
            raise SpecError(f"spec: {spec!r} is neither a spec file (.yaml, .yml) nor a YAML mapping")
    elif isinstance(spec, dict):
        raw = spec
    else:
        raise SpecError(f"spec: a path, a YAML string or a dict, not {type(spec).__name__}")
    name = raw.get("name") if isinstance(raw, dict) else None
    stem = name if isinstance(name, str) and name and all(c.isalnum() or c in "-_." for c in name) else "spec"
    folder = tempfile.TemporaryDirectory(prefix="atlas-spec-")
    path = Path(folder.name) / f"{stem}.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    try:
        return load_sweep(path, Path.cwd() if base_dir is None else base_dir), folder
    except BaseException:
        folder.cleanup()
        raise


def run(loaded: Sweep, *, tracking_uri: str | None = None, address: str | None = None, resume: bool = False,
        top: int = 20, console: Console | None = None, max_trials: int = MAX_TRIALS, yes: bool = False,
        points: list | None = None, take_over: bool = False, tags: dict[str, str] | None = None) -> Outcome:
    """Run a validated sweep: the grid-size guard, the store check, the resume ledger, then every grid point without
    a FINISHED run (runner.run_sweep). What the CLI's `sweep` and `oc.sweep` both do after validation. `tags`: more
    tags on the parent and every child run (a study's `orchestrator.study`)."""
    from rich.console import Console

    from orchestrator.cluster import check_address
    from orchestrator.grid import expand
    from orchestrator.runner import run_sweep
    from orchestrator.store import checked_store
    from orchestrator.tracking import Tracker, check_ledger

    console = console or Console()
    points = expand(loaded) if points is None else points  # the CLI passes the points it expanded
    if len(points) > max_trials and not yes:
        raise AtlasError(f"--max-trials: the grid has {len(points)} points, more than --max-trials {max_trials}; "
                         "pass --yes to run them all (or check the axes with --dry-run)")
    uri = checked_store(tracking_uri)
    check_address(address)
    tracker = Tracker(uri, loaded)
    tracker.tags.update(tags or {})
    done = check_ledger(tracker, points, resume, console, take_over)
    return run_sweep(loaded, address=address, console=console, top=top, points=points, tracker=tracker, done=done)


def sweep(spec: str | Path | dict, *, tracking_uri: str | None = None, address: str | None = None,
          resume: bool = False, top: int = 20, console: Console | None = None, max_trials: int = MAX_TRIALS,
          yes: bool = False, base_dir: str | Path | None = None, take_over: bool = False) -> Atlas:
    """Run every grid point of `spec` that has no FINISHED run yet, print the cross-seed table, and return the sweep.

    `spec`: a spec file's path, a YAML string or a dict (relative paths in a string or dict resolve against
    `base_dir`, by default the current directory). The same validation (SpecError), record and resume as
    `python -m orchestrator sweep`; the keywords are its options. An interrupted sweep (Ctrl-C) or one with trials that
    failed every retry returns too: see `Atlas.interrupted` and `Atlas.failed`."""
    from rich.console import Console

    from orchestrator.progress import phase

    console = console or Console()
    from orchestrator.__main__ import _validation_steps

    label = Path(spec).name if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec) else "the spec"
    with phase(console, f"validating {label}: {_validation_steps()}"):
        loaded, folder = load_spec(spec, base_dir)
    try:
        for line in loaded.warnings:
            console.print(line)
        outcome = run(loaded, tracking_uri=tracking_uri, address=address, resume=resume, top=top, console=console,
                      max_trials=max_trials, yes=yes, take_over=take_over)
    finally:
        if folder is not None:
            folder.cleanup()
    if outcome.interrupted:
        finished = outcome.skipped + outcome.logged
        console.print(f"interrupted: {finished} of {outcome.n_points} grid points finished; run the same sweep again "
                      "to " + ("finish the rest" if finished < outcome.n_points else "print the table"))
    if outcome.failed:
        console.print(f"{len(outcome.failed)} trials failed after retries: {', '.join(outcome.failed[:5])}")
    from orchestrator.store import resolve_uri

    return Atlas(loaded.spec.name, resolve_uri(tracking_uri), outcome=outcome)  # `run` checked it already


def load(name: str, tracking_uri: str | None = None) -> Atlas:
    """The sweep `name` from the store (default: the one `sweep` writes); AtlasError if it has no FINISHED run."""
    from orchestrator.report.record import finished_trials
    from orchestrator.store import checked_store

    uri = checked_store(tracking_uri)
    finished_trials(uri, name, "name")  # the same one-line errors as `report`: no such sweep, nothing finished
    return Atlas(name, uri)


@dataclass
class Atlas:
    """One sweep's record: every method reads the MLflow store (nothing is recomputed)."""

    name: str
    tracking_uri: str
    outcome: Outcome | None = field(default=None, repr=False)  # what this process's `sweep` did (None: `load`)
    _record: Any = field(default=None, init=False, repr=False)
    _figures: dict | None = field(default=None, init=False, repr=False)

    @property
    def interrupted(self) -> bool:
        return bool(self.outcome and self.outcome.interrupted)

    @property
    def failed(self) -> list[str]:
        """trial_ids of grid points that failed every retry in this process's `sweep`."""
        return list(self.outcome.failed) if self.outcome else []

    @property
    def ran(self) -> int:
        """Grid points this process's `sweep` logged (0 after `load`, or when everything had finished before)."""
        return self.outcome.logged if self.outcome else 0

    def _file(self, name: str, read):
        """A file the sweep's newest parent run that has it holds, read by `read(path)`."""
        from mlflow.tracking import MlflowClient

        from orchestrator.store import RetryOnLock
        from orchestrator.sweepfiles import newest_file

        client = RetryOnLock(MlflowClient(tracking_uri=self.tracking_uri))
        experiment = client.get_experiment_by_name(self.name)
        with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
            found = newest_file(client, experiment.experiment_id, name, Path(tmp)) if experiment else None
            if found is None:
                raise AtlasError(f"sweep {self.name!r} in {self.tracking_uri} has no {name} on a parent run")
            return read(found)

    def table(self) -> pd.DataFrame:
        """The cross-seed table the sweep printed: one row per group of axis values (all but seed), each metric's
        mean, std, n, min and max, strongest |primary metric| first (aggregate.parquet)."""
        import pandas as pd

        return self._file("aggregate.parquet", pd.read_parquet)

    def runs(self) -> pd.DataFrame:
        """One row per FINISHED grid point: run_id, trial_id, params, metrics (what `export` writes)."""
        from orchestrator.export import points

        return points(self.tracking_uri, self.name)

    def items(self) -> pd.DataFrame:
        """One row per (grid point, eval item): trial_id, axis values, item, the kind's per-item values
        (items.parquet)."""
        import pandas as pd

        return self._file("items.parquet", pd.read_parquet)

    def inputs(self) -> pd.DataFrame:
        """Every item the sweep used: family, seed, split (train / eval), prompt, target, distractor, ... in the order
        the trials used them (items.jsonl)."""
        import pandas as pd

        def read(path: Path) -> pd.DataFrame:
            return pd.DataFrame([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line])

        return self._file("items.jsonl", read)

    def vectors(self) -> dict[str, Tensor]:
        """The saved steering vectors, name -> tensor: `family/seed=S/layer=L/vector_type` (unit, (d_model,)) and
        `family/seed=S/layer=L/r_L` (shape (1,)) (vectors.safetensors)."""
        from safetensors.torch import load_file

        return self._file("vectors.safetensors", lambda path: load_file(str(path)))

    def vector(self, *, family: str, seed: int, layer: int, vector_type: str) -> Saved:
        """One saved vector: its unit vector and r_L; `.at(strength)` is what a trial of that strength added."""
        from orchestrator.sweepfiles import VECTORS
        from orchestrator.vectors import read

        return self._file(VECTORS, lambda path: read(path, family, seed, layer, vector_type))

    def hubs(self) -> pd.DataFrame:
        """The hub table of an ablation sweep: per (component, method), each seed's hub, the mode, its std, the top-3
        layers (hubs.parquet)."""
        import pandas as pd

        return self._file("hubs.parquet", pd.read_parquet)

    def report(self, path: str | Path | None = None) -> Report:
        """Write the HTML report (report.html and the PNGs) into folder `path` (default mlruns/reports/<name>/);
        logged under report/ on the newest parent run, as `python -m orchestrator report` does."""
        from orchestrator.report import write_report

        return write_report(self.tracking_uri, self.name, Path(path) if path else None)

    def _built(self) -> dict:
        if self._figures is None:
            from orchestrator.report.record import read
            from orchestrator.report.scale import models_section
            from orchestrator.report.sections import build

            record = read(self.tracking_uri, self.name, "name")
            built = models_section(record) if len(record.models) > 1 else build(record)
            self._figures = {shown.id: shown for shown in built.figures}
        return self._figures

    def figures(self) -> list[str]:
        """The ids of the report's figures, in the report's order."""
        return list(self._built())

    def figure(self, name: str) -> Figure:
        """A report figure by id (see `figures()`), a matplotlib Figure; drawn inline when it ends a Jupyter cell."""
        shown = self._built()
        if name not in shown:
            raise AtlasError(f"figure: no figure {name!r} in the report of {self.name!r} (figures: "
                             f"{', '.join(shown) or 'none'})")
        _inline_figures()
        return shown[name].figure


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow 'Downloading artifacts' bar for the small files these readers fetch (a notebook would keep them)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _inline_figures() -> None:
    """In IPython, draw a bare matplotlib Figure (the report's figures use no pyplot) as a PNG."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure

    from orchestrator.report.figures import png

    shell.display_formatter.formatters["image/png"].for_type(Figure, png)


__all__ = ["Atlas", "load", "load_spec", "run", "sweep"]
