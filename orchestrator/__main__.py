"""Command line: `python -m orchestrator sweep SPEC` and `python -m orchestrator ui`."""
from __future__ import annotations

import sys

import click
from rich.console import Console

from interventions.registry import AtlasError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Causal-atlas sweeps: steering (and more kinds) over seeds x layers x ..., run by Ray Tune, logged to MLflow."""


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db).")
@click.option("--address", help="Ray cluster to join, e.g. 'auto' after `ray up cluster.yaml` (default: a local Ray).")
@click.option("--dry-run", is_flag=True, help="Validate the spec, print the grid size and per-axis counts; touch nothing.")
@click.option("--top", default=20, show_default=True, help="Rows of the cross-seed table to print.")
def sweep(spec: str, tracking_uri: str | None, address: str | None, dry_run: bool, top: int) -> None:
    """Run every grid point of SPEC that has no FINISHED run yet, then print the cross-seed table.

    Exit codes: 0 done, 1 some trials failed after retries, 2 bad input, 130 interrupted
    (rerun the same command to finish the rest).
    """
    from orchestrator.spec import load_sweep

    console = Console(width=None if sys.stdout.isatty() else 160)  # pipes and CI logs get the whole table
    loaded = load_sweep(spec)
    if dry_run:
        from orchestrator.grid import axis_order, expand

        sizes = ", ".join(f"{a}={len(loaded.axes[a])}" for a in axis_order(loaded))
        console.print(f"{loaded.spec.name}: {len(expand(loaded))} grid points ({sizes}); "
                      f"model {loaded.spec.model} ({loaded.model.n_layers} layers), kind {loaded.spec.kind}")
        return
    from orchestrator.runner import run_sweep

    outcome = run_sweep(loaded, tracking_uri=tracking_uri, address=address, console=console, top=top)
    if outcome.interrupted:
        console.print(f"interrupted: {outcome.skipped + outcome.logged} of {outcome.n_points} grid points finished; "
                      "rerun the same command to finish the rest")
        sys.exit(130)
    if outcome.failed:
        console.print(f"{len(outcome.failed)} trials failed after retries: {', '.join(outcome.failed[:5])}")
        sys.exit(1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=5000, show_default=True)
@click.option("--tracking-uri", help="MLflow store to browse (default: the same one `sweep` writes).")
def ui(host: str, port: int, tracking_uri: str | None) -> None:
    """Browse every sweep's runs in the MLflow UI."""
    from orchestrator.tracking import resolve_uri, serve_ui

    uri = resolve_uri(tracking_uri)
    click.echo(f"MLflow UI for {uri} on http://{host}:{port}  (Ctrl-C stops it)")
    sys.exit(serve_ui(uri, host, port))


def main() -> None:
    try:
        cli(standalone_mode=False)
    except AtlasError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
