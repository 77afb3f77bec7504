"""The CLI end to end on sweeps/smoke.yaml through Ray Tune into MLflow: record, aggregate, resume, crash, UI."""
from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import (
    SMOKE,
    children,
    cli,
    crash_once_env,
    finished_now,
    free_port,
    role,
    slow_trials_env,
    start,
    store,
    sweep_runs,
)

pytestmark = pytest.mark.slow  # Ray, subprocess CLIs or servers, end to end


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smoke")
    done = cli(cwd, "sweep", str(SMOKE))
    assert done.returncode == 0, done.stdout + done.stderr
    return cwd, done


def test_every_grid_point_is_one_finished_child_run(smoke_run):
    cwd, _ = smoke_run
    grid = expand(load_sweep(SMOKE))
    all_runs = sweep_runs(cwd)
    kids = children(all_runs)
    assert len(kids) == len(grid) == 32
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in kids)
    assert set(ids) == {p.trial_id for p in grid} and max(ids.values()) == 1
    parents = [r for r in all_runs if r.data.tags.get("orchestrator.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    by_id = {p.trial_id: p for p in grid}
    for run in kids:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["orchestrator.kind"] == "steering" and run.data.tags["orchestrator.spec_hash"]
        point = by_id[run.data.tags["orchestrator.trial_id"]]
        assert run.data.params == {"model": "tiny-llama", "kind": "steering",
                                   **{k: str(v) for k, v in point.values.items()}}
        expected = {"ld_delta", "target_prob_clean", "target_prob_steered", "kl", "accuracy_clean", "accuracy_steered",
                    "ld_delta_median", "anti_steerable_fraction", "ld_delta_ci_low", "ld_delta_ci_high",
                    "ld_delta_select", "ld_delta_report", "cos_mean_diff", "pair_consistency", "depth"}
        if point.values["strength"] < 0:
            expected |= {"selectivity", "target_logprob_drop", "collateral_logprob_drop"}
        assert set(run.data.metrics) == expected
    artifacts = {a.path for a in store(cwd).list_artifacts(parents[0].info.run_id)}
    assert {"smoke.yaml", "items.jsonl", "aggregate.parquet", "aggregate.txt"} <= artifacts


def test_aggregate_groups_over_seeds_with_numpy_std(smoke_run):
    cwd, done = smoke_run
    table = pd.read_parquet(cwd / "mlruns" / "reports" / "smoke" / "aggregate.parquet")
    assert len(table) == 32 // 2
    assert "aggregate table:" in done.stdout and "ld_delta" in done.stdout
    logged = defaultdict(list)
    for run in children(sweep_runs(cwd)):
        p = run.data.params
        logged[(p["family"], int(p["layer"]), float(p["strength"]), p["vector_type"])].append(run.data.metrics)
    for _, row in table.iterrows():
        values = logged[(row["family"], row["layer"], row["strength"], row["vector_type"])]
        for metric in ("ld_delta", "kl", "target_prob_steered"):
            xs = np.array([v[metric] for v in values])
            assert row[f"{metric}_n"] == len(xs) == 2
            assert row[f"{metric}_mean"] == pytest.approx(xs.mean(), rel=1e-9, abs=1e-12)
            assert row[f"{metric}_std"] == pytest.approx(np.std(xs, ddof=1), rel=1e-9, abs=1e-12)
            assert row[f"{metric}_min"] == xs.min() and row[f"{metric}_max"] == xs.max()
    beyond = table["ld_delta_beyond"].abs()  # the effect beyond the random vector at the same cell, largest first
    assert beyond.notna().tolist() == sorted(beyond.notna().tolist(), reverse=True)  # the controls' own rows last
    assert beyond.dropna().tolist() == sorted(beyond.dropna().tolist(), reverse=True)


def test_model_is_loaded_once_per_actor_not_per_trial(smoke_run):
    cwd, _ = smoke_run
    kids = children(sweep_runs(cwd))
    per_worker = defaultdict(set)
    for run in kids:
        per_worker[run.data.tags["orchestrator.worker"]].add(run.data.tags["orchestrator.model_loads"])
    assert len(per_worker) <= 2 < len(kids)  # 2 CPUs, 1 CPU per trial: at most two actors
    assert all(loads == {"1"} for loads in per_worker.values())


def test_trials_run_on_the_workers_that_preloaded_the_model(smoke_run):
    """The local Ray's first workers load the model as they start (startup.py); Tune's actors land on them (its
    trainables' runtime_env would start fresh workers that load it again, later)."""
    cwd, _ = smoke_run
    preloaded = {run.data.tags["orchestrator.worker"]: run.data.tags["orchestrator.preloaded"]
                 for run in children(sweep_runs(cwd))}
    assert "True" in preloaded.values(), preloaded


def test_packed_trials_equal_unpacked_trials_without_prefix_reuse(smoke_run, tmp_path):
    """smoke.yaml packs (strength x vector_type) four points per Tune trial; pack 1 without prefix reuse agrees."""
    cwd, _ = smoke_run
    plain = tmp_path / "smoke.yaml"
    plain.write_text(SMOKE.read_text() + "execution: {pack: 1, prefix_reuse: false}\n")
    done = cli(tmp_path, "sweep", str(plain))
    assert done.returncode == 0, done.stdout + done.stderr
    packed = {r.data.tags["orchestrator.trial_id"]: r for r in children(sweep_runs(cwd))}
    single = {r.data.tags["orchestrator.trial_id"]: r for r in children(sweep_runs(tmp_path))}
    assert packed.keys() == single.keys() and len(packed) == 32  # execution settings do not change trial ids
    assert {r.data.tags["orchestrator.pack_size"] for r in packed.values()} == {"4"}
    assert {r.data.tags["orchestrator.pack_size"] for r in single.values()} == {"1"}
    for trial_id, run in packed.items():
        other = single[trial_id].data.metrics
        assert run.data.metrics.keys() == other.keys()
        for k, v in run.data.metrics.items():
            assert v == pytest.approx(other[k], abs=1e-4, rel=1e-4, nan_ok=True), (trial_id, k)


def test_rerun_resumes_and_duplicates_nothing(smoke_run):
    cwd, _ = smoke_run
    before = sweep_runs(cwd)
    again = cli(cwd, "sweep", str(SMOKE))
    assert again.returncode == 0, again.stderr
    assert "nothing to run" in again.stdout and "ld_delta" in again.stdout  # no Tune run; the table again
    assert "starting a local Ray" not in again.stdout
    all_runs = sweep_runs(cwd)
    assert len(children(all_runs)) == 32
    assert {r.info.run_id for r in all_runs} == {r.info.run_id for r in before}  # no new run, no empty parent
    assert [r.info.status for r in role(all_runs, "parent")] == ["FINISHED"]


def test_a_crashed_worker_is_retried_and_logged_once(tmp_path):
    marker = tmp_path / "crash"
    marker.mkdir()
    done = cli(tmp_path, "sweep", str(SMOKE), env=crash_once_env(marker))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (marker / "crashed").exists(), "the fault was not injected"
    kids = children(sweep_runs(tmp_path))
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in kids)
    assert len(ids) == 32 and max(ids.values()) == 1  # the killed trial was retried, and logged once
    said = done.stdout
    assert "worker failed (" in said or "runs again on fresh actors" in said, said  # Ray saw the worker die


def test_an_interrupted_driver_resumes_without_loss_or_duplicates(tmp_path):
    proc = start(tmp_path, "sweep", str(SMOKE), env=slow_trials_env(1))  # Ctrl-C lands while trials remain
    deadline = time.time() + 240
    while time.time() < deadline and len(finished_now(tmp_path)) < 4:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    first = len(children(sweep_runs(tmp_path)))
    assert proc.returncode == 130, out
    assert 4 <= first < 32, out
    assert "Traceback" not in out, out
    again = cli(tmp_path, "sweep", str(SMOKE))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{first} already finished" in again.stdout
    runs = sweep_runs(tmp_path)
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in children(runs))
    assert len(ids) == 32 and max(ids.values()) == 1
    parents = role(runs, "parent")  # the rerun continued the interrupted parent: every point in one place
    assert [r.info.status for r in parents] == ["FINISHED"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children(runs)} == {parents[0].info.run_id}


def test_gpu_request_on_a_cpu_cluster_is_bad_input(tmp_path):
    spec = tmp_path / "gpu.yaml"
    spec.write_text(SMOKE.read_text().replace("gpu: 0", "gpu: 0.25"))
    done = cli(tmp_path, "sweep", str(spec))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == ["error: resources.gpu: 0.25 GPU per trial requested but the Ray "
                                                "cluster has 0 GPUs"]
    client = store(tmp_path)
    assert client.get_experiment_by_name("smoke") is None


def test_ui_serves_the_sweep_on_loopback(smoke_run):
    cwd, _ = smoke_run
    port = free_port()
    proc = start(cwd, "ui", "--port", str(port))
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke"
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try:
                body = urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert body is not None and '"name": "smoke"' in body.replace('":"', '": "')
        with pytest.raises(OSError):  # bound to loopback only
            ip = socket.gethostbyname(socket.gethostname())
            if ip.startswith("127."):
                raise OSError("no non-loopback address to try")
            urllib.request.urlopen(f"http://{ip}:{port}/", timeout=2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
