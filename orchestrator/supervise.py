"""The sweep CLI's keeper: the driver runs as a child process, and a driver that dies before it ends is resumed.

Ray ties a driver to the raylet of its machine: when that raylet dies (a Ray agent or the raylet
killed, the OOM killer), Ray's core worker ends the driver's process at once, from C++, with no
Python left to catch it. So `python -m orchestrator sweep` keeps the driver in a child process.
The child notes what it knows in a status file (its spec's `max_failures`, at the end its exit
code). A child that died without noting an exit lost its node: on a local Ray the keeper starts
the same command again (the record keeps every finished point, so only the rest runs), at most
`max_failures` times; a driver that joined a cluster (`--address`, RAY_ADDRESS) stops with exit 1
and says how to go on. Only the standard library here: the keeper must start in milliseconds.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

STATUS_ENV = "ATLAS_DRIVER_STATUS"  # the status file of a kept driver (its presence: this process is kept)
RESTART_ENV = "ATLAS_DRIVER_RESTART"  # how many times the keeper started the driver again (0: the first start)
LOST = 1  # the keeper's exit code when it gives up on a lost driver (as for trials that failed every retry)


def kept() -> bool:
    """True in a driver the keeper started."""
    return bool(os.environ.get(STATUS_ENV))


def note(**facts) -> None:
    """Append facts to the status file of a kept driver (nothing otherwise)."""
    path = os.environ.get(STATUS_ENV)
    if path:
        try:
            with open(path, "a") as out:
                out.write(json.dumps(facts) + "\n")
        except OSError:  # the keeper treats a driver with no exit noted as lost: never hide why this one ended
            pass


def _read(path: Path) -> dict:
    facts: dict = {}
    try:
        for line in path.read_text().splitlines():
            facts.update(json.loads(line))
    except (OSError, ValueError):
        pass
    return facts


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the keeper dies (Linux), so that killing the CLI kills its driver."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _joins_cluster(args: list[str]) -> str | None:
    """The Ray cluster the command joins, if any (a local Ray is started again; a cluster is not ours to restart)."""
    for i, arg in enumerate(args):
        if arg == "--address" and i + 1 < len(args):
            value = args[i + 1]
            return None if value == "local" else value
        if arg.startswith("--address="):
            value = arg.split("=", 1)[1]
            return None if value == "local" else value
    return os.environ.get("RAY_ADDRESS") or None


def _why(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def keep(args: list[str], command: tuple[str, ...] = (sys.executable, "-m", "orchestrator")) -> int:
    """Run `python -m orchestrator ARGS` (`command` ARGS) as a kept child until it ends; returns the exit code for
    the CLI."""
    signalled: list[int] = []
    child: subprocess.Popen | None = None

    def forward(signum, frame) -> None:  # Ctrl-C (to the group, or to this process only) and SIGTERM reach the driver
        signalled.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    cluster = _joins_cluster(args)
    restarts = 0
    with tempfile.TemporaryDirectory(prefix="atlas-driver-") as folder:
        while True:
            status = Path(folder) / f"status-{restarts}.jsonl"
            env = {**os.environ, STATUS_ENV: str(status), RESTART_ENV: str(restarts)}
            if cluster and "RAY_AUTH_MODE" not in env and (Path.home() / ".ray" / "auth_token").exists():
                env["RAY_AUTH_MODE"] = "token"  # Ray 2.59+ clusters ask for it; one without auth ignores it
            child = subprocess.Popen([*command, *args], env=env,
                                     preexec_fn=_die_with_parent)
            code = child.wait()
            facts = _read(status)
            if "exit" in facts or signalled or "max_failures" not in facts:
                if restarts and "exit" in facts and facts["exit"] == 0:
                    print(f"{facts.get('name', 'sweep')}: finished after {restarts} driver restart"
                          f"{'s' if restarts > 1 else ''} (its Ray node died; the points finished before were kept)",
                          file=sys.stderr, flush=True)
                return facts.get("exit", 128 - code if code < 0 else code)
            name = facts.get("name", "sweep")
            lost = (f"{name}: the driver died before the sweep ended ({_why(code)}): Ray ends a driver whose raylet or "
                    "cluster head goes away (a raylet, Ray agent or head process killed, or out of memory)")
            if cluster:
                print(f"error: {lost}; the Ray cluster at {cluster} is not started here: every point finished before "
                      "is kept in the store; once the cluster answers, rerun the same command to run the rest",
                      file=sys.stderr, flush=True)
                return LOST
            if restarts >= facts["max_failures"]:
                print(f"error: {lost}, {restarts + 1} times (max_failures: {facts['max_failures']}); every point "
                      "finished before is kept in the store: rerun the same command to run the rest",
                      file=sys.stderr, flush=True)
                return LOST
            restarts += 1
            print(f"{lost}; every point finished before is kept: starting a fresh local Ray and the rest of the "
                  f"sweep (driver restart {restarts} of at most {facts['max_failures']})", file=sys.stderr, flush=True)
