"""Faults on the real CLI: a trial actor killed with SIGKILL, the driver killed with SIGKILL then --resume,
a spec changed between runs, two drivers of one sweep; and the determinism those recoveries rely on.

The promise under test: each grid point ends as exactly one FINISHED MLflow run, whatever happens,
and a crashed sweep continues where it stopped.
"""
from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil
import pytest

from orchestrator.driver import worker_settings
from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from orchestrator.tracking import Tracker
from tests.conftest import (
    N_SMOKE,
    REPO,
    SMOKE,
    children,
    cli,
    cli_env,
    finished_now,
    role,
    run_main,
    slow_trials_env,
    start,
    store,
    sweep_runs,
    tiny_steering,
)

pytestmark = pytest.mark.slow  # Ray, subprocess CLIs or servers, end to end


def wait_for(cwd: Path, proc: subprocess.Popen, n: int, timeout: float = 240) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        workers = finished_now(cwd)
        if len(workers) >= n:
            return workers
        time.sleep(0.2)
    out = proc.stdout.read() if proc.poll() is not None else ""
    raise AssertionError(f"never saw {n} finished trials (exit {proc.poll()}): {out[-2000:]}")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def reap(procs: list[psutil.Process]) -> None:
    """Kill, by pid, what a killed driver left behind, so no test leaks processes: most of its Ray processes
    follow it within a second, but Ray's DashboardAgent and RuntimeEnvAgent stay up, orphaned."""
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=15)


def exactly_once(cwd: Path, points) -> list:
    """Every grid point has exactly one FINISHED child run; returns all runs."""
    runs = sweep_runs(cwd)
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in children(runs))
    assert set(ids) == {p.trial_id for p in points}, "lost grid points"
    assert max(ids.values()) == 1, f"duplicated: {[t for t, n in ids.items() if n > 1]}"
    return runs


@pytest.fixture(scope="module")
def smoke_points():
    return expand(load_sweep(SMOKE))


# --- a trial actor killed with SIGKILL mid-sweep ------------------------------------------------------------------

def killed_mid_sweep(cwd: Path, victim) -> tuple[int, str, int, int]:
    """smoke.yaml through the CLI; once 4 trials are logged, victim(cli process, their worker tags) gets SIGKILL.
    Returns (exit code, output, the victim's pid, FINISHED runs at the kill)."""
    proc = start(cwd, "sweep", str(SMOKE), env=slow_trials_env(1))  # the kill lands while trials remain
    try:
        workers = wait_for(cwd, proc, 4)
        process = victim(proc, workers)
        finished_at_kill = len(finished_now(cwd))
        process.kill()  # SIGKILL: no cleanup in the process, Ray sees it die
        out, _ = proc.communicate(timeout=300)
    finally:
        leftover = descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
        reap(leftover)
    return proc.returncode, out, process.pid, finished_at_kill


@pytest.fixture(scope="module")
def worker_killed(tmp_path_factory):
    """Once 4 trials are logged, one actor that ran them is killed with SIGKILL. Default max_failures (2): Ray Tune
    gives up on a trial that fails again while PENDING (restarted onto an actor that died too) before its retries
    are spent; the driver then runs it again on fresh actors (driver.py)."""
    def actor(proc, workers):
        victim = psutil.Process(int(workers[0].rsplit(":", 1)[1]))
        assert victim in descendants(proc.pid) and victim.cmdline()[0].startswith("ray::"), victim.cmdline()
        return victim

    cwd = tmp_path_factory.mktemp("worker_kill")
    return (cwd, *killed_mid_sweep(cwd, actor))


def test_a_trial_actor_killed_with_sigkill_is_retried_and_every_point_logged_once(worker_killed, smoke_points):
    cwd, code, out, pid, finished_at_kill = worker_killed
    assert code == 0, out[-3000:] + "\n".join(line for line in out.splitlines() if "failed" in line)
    assert "worker failed (The actor is dead" in out or "failed while restarting" in out  # the driver says why
    assert finished_at_kill < N_SMOKE, "the sweep was over before the kill: nothing was tested"
    runs = exactly_once(cwd, smoke_points)
    workers = Counter(r.data.tags["orchestrator.worker"].rsplit(":", 1)[1] for r in children(runs))
    assert str(pid) in workers  # the killed actor had logged trials ...
    assert len(workers) >= 2  # ... and others (a replacement at least) finished the sweep
    assert [r.info.status for r in role(runs, "parent")] == ["FINISHED"]
    assert not [r for r in role(runs, "trial") if r.info.status == "RUNNING"]


# --- a Ray agent killed mid-sweep: the raylet follows it, Ray ends the driver, the keeper resumes it ----------------

@pytest.fixture(scope="module")
def node_lost(tmp_path_factory):
    """Once 4 trials are logged, the raylet's runtime-env agent gets SIGKILL. The raylet fate-shares with its
    agents, so the whole local Ray node dies, and with it the driver (Ray's core worker ends the process from C++):
    what a new user's `kill -9` of the first busy `ray::` process did."""
    def agent(proc, workers):
        agents = [p for p in descendants(proc.pid) if p.name().startswith("ray::RuntimeEnvAgent")]
        assert agents, [p.name() for p in descendants(proc.pid)]
        return agents[0]

    cwd = tmp_path_factory.mktemp("node_lost")
    code, out, _, finished_at_kill = killed_mid_sweep(cwd, agent)
    return cwd, code, out, finished_at_kill


def test_a_lost_local_ray_node_costs_a_driver_restart_and_nothing_else(node_lost, smoke_points):
    cwd, code, out, finished_at_kill = node_lost
    assert code == 0, out[-3000:]
    assert finished_at_kill < N_SMOKE, "the sweep was over before the kill: nothing was tested"
    assert "the driver died before the sweep ended" in out and "driver restart 1 of at most 2" in out, out[-3000:]
    assert "smoke: finished after 1 driver restart" in out
    runs = exactly_once(cwd, smoke_points)
    assert [r.info.status for r in role(runs, "parent")] == ["FINISHED"]  # the dead driver's, continued
    assert not [r for r in runs if r.info.status == "RUNNING"]


# --- the driver killed with SIGKILL, then --resume ------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver_killed(tmp_path_factory):
    """smoke.yaml through the CLI; once 8 trials are logged the driver gets SIGKILL (no handler runs); then
    the same command with --resume."""
    cwd = tmp_path_factory.mktemp("driver_kill")
    proc = start(cwd, "sweep", str(SMOKE), env={"ATLAS_CHECKPOINT_SECONDS": "0",  # sweep files after every point
                                                **slow_trials_env(1)})  # the kill lands while trials remain
    try:
        wait_for(cwd, proc, 8)
        leftover = descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        reap(leftover)
    before = sweep_runs(cwd)
    resumed = cli(cwd, "sweep", str(SMOKE), "--resume")
    return cwd, before, resumed


def test_a_killed_driver_leaves_a_running_parent_and_resume_loses_and_duplicates_nothing(driver_killed,
                                                                                          smoke_points):
    cwd, before, resumed = driver_killed
    first = len(role(before, "trial", "FINISHED"))
    assert 8 <= first < N_SMOKE
    dead_parent = role(before, "parent")
    assert [r.info.status for r in dead_parent] == ["RUNNING"]  # SIGKILL: nobody closed it
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{first} already finished, running {N_SMOKE - first}" in resumed.stdout
    runs = exactly_once(cwd, smoke_points)
    status = {r.info.run_id: r.info.status for r in runs}
    assert "RUNNING" not in status.values()
    parents = role(runs, "parent")  # the dead driver's parent, marked KILLED by the next driver, then continued
    assert [(r.info.run_id, r.info.status) for r in parents] == [(dead_parent[0].info.run_id, "FINISHED")]
    history = store(cwd).get_metric_history(parents[0].info.run_id, "to_run")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [N_SMOKE, N_SMOKE - first]
    # the aggregate covers every finished run, those of the dead driver included
    table = pd.read_parquet(cwd / "mlruns" / "reports" / "smoke" / "aggregate.parquet")
    assert table["ld_delta_n"].sum() == N_SMOKE
    # and so do the per-item values: the dead driver checkpointed them (a kill can land between a point's run and
    # its checkpoint: at most the points of that moment lack them)
    items = pd.read_parquet(cwd / "mlruns" / "reports" / "smoke" / "items.parquet")
    assert items["trial_id"].nunique() >= N_SMOKE - 2, resumed.stdout


# --- determinism: the same spec run twice (in other processes, orders and actors) gives bit-identical metrics -------

def metrics_by_trial(cwd: Path) -> dict[str, dict[str, float]]:
    return {r.data.tags["orchestrator.trial_id"]: r.data.metrics for r in children(sweep_runs(cwd))}


def test_the_same_spec_twice_gives_bit_identical_metrics(worker_killed, driver_killed, smoke_points):
    """Two full runs of smoke.yaml (one with a killed actor, one killed and resumed: different actors, trial
    orders and processes) agree bit for bit, and so do the same trials run here in reverse order: seeds are
    set per trial, not per process."""
    import torch

    from interventions.kinds import run_pack
    from orchestrator import worker
    from orchestrator.grid import packs

    a, b = metrics_by_trial(worker_killed[0]), metrics_by_trial(driver_killed[0])
    assert a.keys() == b.keys() and len(a) == N_SMOKE
    assert a == b  # exact float equality, every metric of every trial
    sweep = load_sweep(SMOKE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the actors (resources.cpu: 1)
    try:
        for pack in reversed(packs(sweep, smoke_points)):  # the sweep's packs: batch shapes decide the bits
            entries = [{"point": p.values, "trial_id": p.trial_id, "model": p.model} for p in pack]
            splits = {part.name: part.splits for part in sweep.parts}
            ctx = worker.trial_context(worker_settings(sweep), entries, splits)
            results = run_pack(sweep.kind.name, ctx, [p.values for p in pack])
            for point, result in zip(pack, results):
                assert {k: float(v) for k, v in result.metrics.items()} == a[point.trial_id], point.values
    finally:
        torch.set_num_threads(threads)


# --- a changed spec: refused without --resume; with it only new points run and removed ones leave the table ---------

SMALL = tiny_steering("faults_small") + "baseline: {shots: 0}\n"  # two layers, no prompting point: 2 grid points


def test_a_changed_spec_needs_resume_runs_only_new_points_and_drops_removed_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the local Ray's workers import the package from here, not the cwd
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one Ray for the three sweeps below
    try:
        _changed_spec(tmp_path, monkeypatch, capsys)
    finally:
        ray.shutdown()


def _changed_spec(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL)
    code, out, err = run_main(monkeypatch, capsys, "sweep", str(spec))
    assert code == 0, out + err
    old = {p.values["layer"]: p.trial_id for p in expand(load_sweep(spec))}

    spec.write_text(SMALL.replace("layer: [0, 2]", "layer: [2, 3]"))  # layer 0 removed, layer 3 added
    code, out, err = run_main(monkeypatch, capsys, "sweep", str(spec))
    assert code == 2 and err.strip().splitlines() == [
        "error: name: experiment 'faults_small' holds 1 finished runs that are not grid points of this spec (it "
        "changed since they ran); pass --resume to keep them out of the table and run only the new or changed "
        "points, or give the sweep a new name"], err
    assert len(role(sweep_runs(tmp_path, "faults_small"), "parent")) == 1  # refused before anything was written

    code, out, err = run_main(monkeypatch, capsys, "sweep", str(spec), "--resume")
    assert code == 0, out + err
    assert "--resume: 1 of 2 grid points already finished in 'faults_small'; 1 finished runs of an earlier spec" in out
    runs = sweep_runs(tmp_path, "faults_small")
    layers = Counter(r.data.params["layer"] for r in children(runs))
    assert layers == {"0": 1, "2": 1, "3": 1}  # only layer 3 ran; layer 2 was not run again
    table = pd.read_parquet(tmp_path / "mlruns" / "reports" / "faults_small" / "aggregate.parquet")
    assert sorted(table["layer"]) == [2, 3]  # the removed layer 0 is kept in MLflow but not aggregated

    code, out, err = run_main(monkeypatch, capsys, "sweep", str(spec))  # the resumed spec again: nothing to ask
    assert code == 0 and "running" not in out, out + err
    assert len(children(sweep_runs(tmp_path, "faults_small"))) == 3

    spec.write_text(SMALL.replace("layer: [0, 2]", "layer: [2, 3]").replace("n_eval: 2", "n_eval: 3"))
    assert old[2] not in {p.trial_id for p in expand(load_sweep(spec))}  # a result-changing setting: new ids
    code, out, err = run_main(monkeypatch, capsys, "sweep", str(spec))
    assert code == 2 and "holds 3 finished runs that are not grid points" in err, err


def test_a_second_driver_of_a_running_sweep_is_refused(tmp_path, monkeypatch, capsys):
    """A RUNNING parent whose driver process is alive on this machine: a second driver would duplicate its work."""
    from orchestrator.tracking import _driver_id

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "spec.yaml").write_text(SMALL)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "mlruns").mkdir()
        client = store(tmp_path)
        exp = client.create_experiment("faults_small")
        host = _driver_id().split(":")[0]
        started = f"{psutil.Process(other.pid).create_time():.0f}"
        driver = f"{host}:{other.pid}:{started}"
        client.create_run(exp, tags={"orchestrator.role": "parent", "orchestrator.driver": driver})
        code, _, err = run_main(monkeypatch, capsys, "sweep", "spec.yaml")
        assert code == 2 and err.strip() == (f"error: name: sweep 'faults_small' is being run right now by driver "
                                             f"{host}:{other.pid}; wait for it or stop it (two drivers of one sweep "
                                             "would run the same grid points twice)"), err
    finally:
        other.kill()
        other.wait()
    assert len(client.search_runs([exp])) == 1  # nothing written


# --- Tune giving up on a trial before its retries are spent: the driver runs it again on fresh actors ---------------

class FakeTrial:
    def __init__(self, pack, failures=0, result=None):
        self.config, self.num_failures, self.last_result, self.error_file = {"pack": pack}, failures, result, None


def test_points_tune_gave_up_on_early_run_again_and_are_logged_once(tmp_path, monkeypatch):
    """Ray Tune fails a trial for good when it dies again while PENDING, after 1 failure of max_failures 2: the
    driver reruns exactly those points in a new Tune run; a trial that spent its retries stays failed."""
    from orchestrator import cluster, driver, runner
    from orchestrator.grid import packs

    sweep = load_sweep(SMOKE)
    grid = [[{"trial_id": p.trial_id, "point": p.values} for p in pack] for pack in packs(sweep, expand(sweep))]
    rounds = []

    def fake_tune(sweep, grouped, recorder, storage, round_=0):
        rounds.append(sum(map(len, grouped)))
        ids = {p.trial_id for pack in grouped for p in pack}
        for pack in (g for g in grid if g[0]["trial_id"] in ids):
            if round_ == 0 and pack is grid[0]:
                recorder.on_trial_error(0, [], FakeTrial(pack, failures=1))  # gave up early: runs again
            elif pack is grid[1]:
                recorder.on_trial_error(0, [], FakeTrial(pack, failures=3))  # retries spent: failed
            else:
                results = [{"trial_id": e["trial_id"], "metrics": {"kl": 0.5, "ld_delta": 1.0}, "extra": {}}
                           for e in pack]
                recorder.on_trial_complete(0, [], FakeTrial(pack, result={"results": results, "worker": "w"}))

    monkeypatch.setattr(driver, "_tune", fake_tune)
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(runner, "check_resources", lambda *args: None)
    outcome = runner.run_sweep(sweep, tracking_uri=f"sqlite:///{tmp_path}/m.db", out_dir=tmp_path)
    assert rounds == [32, len(grid[0])]  # a second Tune run for the early pack only
    assert sorted(outcome.failed) == sorted(e["trial_id"] for e in grid[1]) and outcome.logged == 32 - len(grid[1])
    runs = store(f"sqlite:///{tmp_path}/m.db").search_runs([outcome.experiment_id], max_results=1000)
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in children(runs))
    assert set(ids) == {e["trial_id"] for pack in grid for e in pack} - set(outcome.failed) and max(ids.values()) == 1


# --- two drivers of one sweep on two machines (two hostnames, one store): the lease -----------------------------------

def test_a_driver_on_another_machine_is_refused_by_the_lease_and_takes_over_once_it_expired(tmp_path, monkeypatch):
    """Driver A ("machine-a", lease 3 s) runs a 576-point sweep; B ("machine-b") is refused naming A even after
    several lease lengths (A renews it). A dies (SIGKILL) mid-sweep; once its lease expired B is refused without
    --take-over and finishes the sweep with it: every point one FINISHED run, nothing RUNNING, one parent, B's."""
    spec = tmp_path / "smoke.yaml"
    spec.write_text(SMOKE.read_text().replace("seed: [0, 1]", "seed: [0, 1, 2, 3, 4, 5]")
                    .replace("layer: [0, 2]", "layer: [0, 1, 2, 3]")
                    .replace("strength: [-1.0, 0.5]", "strength: [-1.0, -0.5, -0.25, 0.25, 0.5, 1.0]"))
    sweep = load_sweep(spec)
    points = expand(sweep)
    lease = {"ATLAS_LEASE_SECONDS": "3"}
    a = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(spec)], cwd=tmp_path, text=True,
                         env=cli_env(ATLAS_DRIVER_HOST="machine-a", **lease), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(tmp_path, a, 1)
        time.sleep(4)  # more than a lease: A must have renewed it
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("ATLAS_DRIVER_HOST", "machine-b")
        monkeypatch.setenv("ATLAS_LEASE_SECONDS", "3")
        held = Tracker(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", sweep).live_driver()  # B's view, in here:
        leftover = descendants(a.pid)  # a CLI would take seconds, and A might finish meanwhile
        a.kill()
        a.wait(timeout=30)
        at_kill = len(finished_now(tmp_path))
        assert at_kill < len(points), "driver A finished before it was killed: nothing was taken over"
        assert held and "is being run right now by driver machine-a:" in held and "on another machine" in held, held
    finally:
        if a.poll() is None:
            a.kill()
    reap(leftover)
    time.sleep(3.5)  # A's last lease expires
    b = cli(tmp_path, "sweep", str(spec), env={"ATLAS_DRIVER_HOST": "machine-b", **lease})
    assert b.returncode == 2 and "its lease expired" in b.stderr and "--take-over" in b.stderr, b.stderr
    b = cli(tmp_path, "sweep", str(spec), "--take-over", env={"ATLAS_DRIVER_HOST": "machine-b", **lease})
    assert b.returncode == 0, b.stdout + b.stderr
    runs = exactly_once(tmp_path, points)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parents = role(runs, "parent")
    assert [r.info.status for r in parents] == ["FINISHED"]
    assert parents[0].data.tags["orchestrator.driver"].startswith("machine-b:")
