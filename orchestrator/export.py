"""`orchestrator export SWEEP`: one row per grid point (run id, trial id, axis values, metrics) as Parquet or CSV."""
from __future__ import annotations

from pathlib import Path

import click

FORMATS = ("parquet", "csv")


def points(uri: str, name: str):
    """Every FINISHED grid point of sweep `name` as a DataFrame (parents dropped; a point run twice keeps its newest
    run)."""
    from interventions.kinds import KINDS
    from orchestrator.report.record import as_rows, finished_trials, tidy
    from orchestrator.store import TAG

    _, _, found = finished_trials(uri, name, "SWEEP")
    kinds = {r.data.params.get("kind") for r in found}
    curves = tuple(c for k in sorted(kinds & set(KINDS)) for c in KINDS.get(k).curves)
    runs = as_rows(found)
    frame, _ = tidy(runs, curves)  # step-indexed curves have no single value: dropped
    trial_ids = {r.info.run_id: r.data.tags.get(f"{TAG}trial_id") for r in found}
    frame.insert(1, "trial_id", frame["run_id"].map(trial_ids))
    return frame


def write(frame, out: Path, fmt: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    return out


@click.command()
@click.argument("sweep_name")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="parquet", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="File to write (default: ./SWEEP_NAME.FORMAT).")
@click.option("--tracking-uri", help="MLflow store to read (default: the same one `sweep` writes).")
def export(sweep_name: str, fmt: str, out: str | None, tracking_uri: str | None) -> None:
    """Write a sweep's grid points as a table: one row per FINISHED point, axis values and metrics as columns."""
    from orchestrator.store import checked_store

    frame = points(checked_store(tracking_uri), sweep_name)
    path = write(frame, Path(out or f"{sweep_name}.{fmt}"), fmt)
    click.echo(f"{path}: {len(frame)} grid points, {frame.shape[1]} columns (run_id, trial_id, params, metrics)")
