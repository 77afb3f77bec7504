"""A Ray cluster of separate node processes on this machine, as `ray up` leaves them: rehearse a cluster run.

`start` runs `ray start --head` (no CPUs of its own by default, so trials go to the worker nodes) and one
`ray start --address` per worker node, each its own process tree with its CPUs and a resource naming it
(`atlas_node_1`, ...), joined at 127.0.0.1, with Ray's token authentication on. `stop` ends exactly this
cluster's processes (found by its GCS port), never another Ray on the machine. `nodes` says which processes
each node runs, so that a test (or a curious user) can kill one node.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import psutil

from interventions.registry import AtlasError

HOST = "127.0.0.1"
NODE_RESOURCE = "atlas_node_{}"  # worker node k's own resource, 1 of it


def env() -> dict[str, str]:
    """The environment every process of the cluster, and every driver joining it, needs: Ray 2.59+ turns token
    authentication on for a `ray start --head` when a token exists, and a node or driver without the token is
    refused; so the token is made once (~/.ray/auth_token) and asked for everywhere."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else shutil.which("ray") or "ray"


def _run(args: list[str]) -> None:
    done = subprocess.run([_ray(), *args], env=env(), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise AtlasError(f"ray {args[0]} {args[1]}: {lines[-1] if lines else f'exit {done.returncode}'}")


def start(workers: int = 2, port: int = 6390, head_cpus: int = 0, worker_cpus: int = 1) -> str:
    """Start the head and `workers` worker nodes; returns the address to pass as `--address`."""
    if nodes(port):
        raise AtlasError(f"--port: a Ray cluster already runs on {HOST}:{port} (stop it with "
                         f"`python -m orchestrator cluster stop --port {port}`)")
    _run(["get-auth-token", "--generate"])  # prints the token: captured, never shown
    address = f"{HOST}:{port}"
    try:
        _run(["start", "--head", f"--port={port}", f"--node-ip-address={HOST}", f"--num-cpus={head_cpus}",
              "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"])
        for k in range(1, workers + 1):
            _run(["start", f"--address={address}", f"--node-ip-address={HOST}", f"--num-cpus={worker_cpus}",
                  "--num-gpus=0", f'--resources={{"{NODE_RESOURCE.format(k)}": 1}}', "--disable-usage-stats"])
    except BaseException:
        stop(port)
        raise
    return address


@dataclass
class Node:
    raylet: psutil.Process
    head: bool

    def processes(self) -> list[psutil.Process]:
        """The raylet and everything it started (its agents and workers)."""
        try:
            return [self.raylet, *self.raylet.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def resource(self) -> str | None:
        """The worker node's own resource (NODE_RESOURCE), None for the head."""
        found = re.search(r"atlas_node_\d+", " ".join(_cmdline(self.raylet)))
        return found.group(0) if found else None


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _ours(port: int) -> list[psutil.Process]:
    """The cluster's own processes: whatever names its GCS (the GCS, raylets, monitors) by address or port."""
    names = re.compile(rf"^--gcs[-_]address=\S+:{port}$|^--gcs_server_port={port}$")
    return [proc for proc in psutil.process_iter() if any(names.match(arg) for arg in _cmdline(proc))]


def nodes(port: int = 6390) -> list[Node]:
    """The cluster's nodes, the head first."""
    raylets = [p for p in _ours(port) if p.name() == "raylet"]
    out = [Node(p, any(a.startswith("--head") for a in _cmdline(p))) for p in raylets]
    return sorted(out, key=lambda n: not n.head)


def stop(port: int = 6390, timeout: float = 15) -> int:
    """End every process of the cluster on `port` (SIGTERM, then SIGKILL); returns how many there were."""
    procs: dict[int, psutil.Process] = {}
    for proc in _ours(port):
        procs[proc.pid] = proc
        try:
            procs.update((c.pid, c) for c in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # where `ray start` says it runs
    try:
        if current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    except OSError:
        pass
    return len(procs)


def wait_for_cpus(address: str, cpus: float, timeout: float = 60) -> None:
    """Block until the cluster at `address` offers `cpus` CPUs (its worker nodes have registered)."""
    script = ("import ray, sys, time\n"
              f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
              f"deadline = time.time() + {timeout}\n"
              f"while ray.cluster_resources().get('CPU', 0) < {cpus} and time.time() < deadline:\n"
              "    time.sleep(0.2)\n"
              "print(ray.cluster_resources().get('CPU', 0))\n")
    done = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True,
                          timeout=timeout + 60, check=False)  # a process of its own: RAY_AUTH_MODE is read at import
    have = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "no"
    if done.returncode != 0 or float(have if have != "no" else 0) < cpus:
        raise AtlasError(f"the cluster at {address} offers {have} CPUs, not {cpus}, after {timeout:.0f} s")


@click.group("cluster")
def cluster_command() -> None:
    """A local Ray cluster of separate node processes (head + worker nodes), to rehearse a cluster run."""


@cluster_command.command("start")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="Worker nodes.")
@click.option("--port", default=6390, show_default=True, help="The head's GCS port (the address to join).")
@click.option("--head-cpus", default=0, show_default=True, type=click.IntRange(min=0),
              help="CPUs of the head (0: trials run on the worker nodes only).")
@click.option("--worker-cpus", default=1, show_default=True, type=click.IntRange(min=1), help="CPUs per worker node.")
def start_command(workers: int, port: int, head_cpus: int, worker_cpus: int) -> None:
    """Start the head and the worker nodes, each its own process tree, as `ray up` leaves them."""
    address = start(workers, port, head_cpus, worker_cpus)
    wait_for_cpus(address, head_cpus + workers * worker_cpus)
    click.echo(f"Ray cluster at {address}: head ({head_cpus} CPUs) + {workers} worker nodes ({worker_cpus} CPU each, "
               "resources " + ", ".join(NODE_RESOURCE.format(k) for k in range(1, workers + 1)) + ")")
    click.echo(f"  run a sweep on it:  python -m orchestrator sweep SPEC --address {address}")
    click.echo(f"  stop it:            python -m orchestrator cluster stop --port {port}")


@cluster_command.command("status")
@click.option("--port", default=6390, show_default=True)
def status_command(port: int) -> None:
    """The cluster's nodes: head or worker, raylet pid, its processes."""
    found = nodes(port)
    if not found:
        click.echo(f"no Ray cluster on port {port}")
    for node in found:
        click.echo(f"{'head' if node.head else node.resource() or 'worker'}: raylet pid {node.raylet.pid}, "
                   f"{len(node.processes())} processes")


@cluster_command.command("stop")
@click.option("--port", default=6390, show_default=True)
def stop_command(port: int) -> None:
    """End every process of the cluster on PORT (no other Ray on this machine is touched)."""
    click.echo(f"stopped {stop(port)} processes of the Ray cluster on port {port}")
