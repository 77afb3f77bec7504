"""A Ray cluster of separate node processes on this machine (`python -m orchestrator cluster start`, as `ray up`
leaves one): the sweep joins it with --address and spreads over its worker nodes; a worker node killed mid-sweep
costs only its pack; the head killed mid-sweep ends the driver with exit 1 and a message, and rerunning against a
new head finishes the rest, every grid point exactly one FINISHED run and nothing left RUNNING."""
from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from orchestrator import localcluster
from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import N_SMOKE, SMOKE, children, cli_env, finished_now, free_port, role
from tests.test_faults import exactly_once, wait_for

pytestmark = pytest.mark.slow  # Ray node processes, subprocess CLIs


@pytest.fixture(scope="module")
def smoke_points():
    return expand(load_sweep(SMOKE))


@pytest.fixture
def cluster():
    port = free_port()
    address = localcluster.start(workers=2, port=port)
    localcluster.wait_for_cpus(address, 2)
    try:
        yield port, address
    finally:
        localcluster.stop(port)
    assert not localcluster.nodes(port)


def sweep_on(cwd: Path, address: str, spec: Path = SMOKE) -> subprocess.Popen:
    env = {**cli_env(), "RAY_gcs_rpc_server_reconnect_timeout_s": "5"}  # a lost head ends the driver in 5 s
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(spec), "--address", address],
                            cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def test_the_cluster_is_separate_processes_and_stop_ends_only_its_own(cluster):
    port, address = cluster
    nodes = localcluster.nodes(port)
    assert [n.head for n in nodes] == [True, False, False]
    assert {n.resource() for n in nodes[1:]} == {"atlas_node_1", "atlas_node_2"}
    assert len({n.raylet.pid for n in nodes}) == 3 and all(n.raylet.ppid() == 1 for n in nodes)  # daemons, as ray up


def name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


def busy_worker_node(port: int, timeout: float = 120) -> localcluster.Node:
    """A worker node running a trial right now (its model-holding actor is up): killing it must cost a pack."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for node in localcluster.nodes(port)[1:]:
            if any(name(p).startswith("ray::ImplicitFunc") for p in node.processes()):
                return node
        time.sleep(0.05)
    raise AssertionError("no worker node ran a trial")


def test_a_worker_node_killed_mid_sweep_costs_only_its_pack(cluster, tmp_path, smoke_points):
    port, address = cluster
    proc = sweep_on(tmp_path, address)
    try:
        wait_for(tmp_path, proc, 4)
        node = busy_worker_node(port)
        at_kill = len(finished_now(tmp_path))
        kill(node.processes())  # its raylet, agents and Ray workers, the trial's actor among them
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert at_kill < N_SMOKE
    # the retry summary is not asserted here: a node killed just after its actor reported its pack costs nothing
    # to retry (test_faults.py asserts the summary line for a killed actor)
    runs = exactly_once(tmp_path, smoke_points)
    nodes = Counter(r.data.tags["orchestrator.node"] for r in children(runs))
    # every run on a worker node (the head has no CPUs); the killed node may have finished none before it died
    assert nodes and all(n != "head" for n in nodes), nodes
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_a_killed_head_ends_the_driver_and_a_new_head_finishes_the_rest(cluster, tmp_path):
    port, address = cluster
    spec = tmp_path / "smoke.yaml"  # 96 points: the driver still runs when Ray gives up on the head
    spec.write_text(SMOKE.read_text().replace("seed: [0, 1]", "seed: [0, 1, 2, 3, 4, 5]"))
    points = expand(load_sweep(spec))
    proc = sweep_on(tmp_path, address, spec)
    try:
        wait_for(tmp_path, proc, 2)
        nodes = localcluster.nodes(port)
        workers = {p.pid for n in nodes[1:] for p in n.processes()}
        kill([p for p in localcluster._ours(port) if p.pid not in workers] + nodes[0].processes())  # GCS, raylet
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-3000:]
    assert f"the Ray cluster at {address} is not started here" in out and "rerun the same command" in out, out
    localcluster.stop(port)
    localcluster.wait_for_cpus(localcluster.start(workers=1, port=port), 1)  # a new head at the same address
    again = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(spec), "--address", address],
                           cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already finished, running" in again.stdout
    runs = exactly_once(tmp_path, points)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert [r.info.status for r in role(runs, "parent")] == ["FINISHED"]
