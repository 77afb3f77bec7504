"""Scheduling on Ray: fractional GPUs pack model-holding actors on one GPU; a two-node cluster runs a sweep;
cluster.yaml passes Ray's own cluster-launcher validation."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest
import ray
import yaml

from orchestrator.cluster import ray_session
from orchestrator.driver import worker_settings
from orchestrator.runner import run_sweep
from orchestrator.spec import Execution, Resources, load_sweep
from tests.conftest import REPO, SMOKE, children, sweep_runs

pytestmark = pytest.mark.slow  # Ray, subprocess CLIs or servers, end to end


def smoke(cpu: float, gpu: float, memory_gb: float | None = None):
    """smoke.yaml with these resources, one grid point per Ray Tune trial (no packing: 32 trials to schedule)."""
    sweep = load_sweep(SMOKE)
    resources = Resources(cpu=cpu, gpu=gpu, memory_gb=memory_gb)
    return sweep.updated(resources=resources, execution=Execution(pack=1))


@pytest.fixture
def fresh_ray():
    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


def traced_trial(config: dict, splits, settings) -> None:
    """run_trial, held for a second and timed: a trial takes long enough that concurrent ones overlap.

    Replaces driver.run_trial in the test below; Ray imports it from this module in the actors.
    """
    import os
    import time

    from orchestrator.worker import run_trial

    start = time.time()
    time.sleep(1.0)
    run_trial(config, splits, settings)
    trace = Path(os.environ["ATLAS_TEST_TRACE"]) / f"{os.getpid()}-{start:.6f}"
    trace.write_text(f"{start} {time.time()}")


def most_at_once(trace_dir: Path) -> int:
    """The largest number of traced trials whose [start, end] intervals overlap at one instant."""
    events = []
    for f in trace_dir.iterdir():
        start, end = map(float, f.read_text().split())
        events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_quarter_gpus_run_four_trials_at_once_on_one_gpu_never_five(tmp_path, fresh_ray, monkeypatch):
    from orchestrator import driver

    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("ATLAS_TEST_TRACE", str(trace))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the actors import traced_trial from tests/
    monkeypatch.setattr(driver, "run_trial", traced_trial)
    # A fake GPU (Ray only counts it) and CPUs for 8 quarter-CPU actors: only the GPU limits the packing.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    outcome = run_sweep(smoke(cpu=0.25, gpu=0.25), tracking_uri=uri, out_dir=tmp_path)
    assert outcome.logged == 32 and not outcome.failed
    loads = defaultdict(set)
    for r in children(sweep_runs(uri, "smoke")):
        assert r.data.tags["orchestrator.gpu_ids"] == "0"  # every actor was given a share of GPU 0
        loads[r.data.tags["orchestrator.worker"]].add(r.data.tags["orchestrator.model_loads"])
    assert len(list(trace.iterdir())) == 32
    assert most_at_once(trace) == 4  # four trials at once on the one GPU, never a fifth
    assert len(loads) == 4 and all(v == {"1"} for v in loads.values())  # four actors, each loaded its model once


def test_actors_ask_ray_for_memory_so_a_small_budget_runs_fewer_copies_at_once(tmp_path, fresh_ray, monkeypatch):
    from orchestrator import driver

    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("ATLAS_TEST_TRACE", str(trace))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setattr(driver, "run_trial", traced_trial)
    # 4 CPUs would hold 4 one-CPU actors; memory for 2 of them (1 GiB each, as if the model were large)
    ray.init(num_cpus=4, _memory=int(2.5 * 2**30), include_dashboard=False, log_to_driver=False)
    outcome = run_sweep(smoke(cpu=1, gpu=0, memory_gb=1), tracking_uri=f"sqlite:///{tmp_path}/m.db", out_dir=tmp_path)
    assert outcome.logged == 32 and not outcome.failed
    assert most_at_once(trace) == 2


def test_a_two_node_gpu_cluster_spreads_the_sweep_over_both_nodes(tmp_path, fresh_ray, monkeypatch):
    from ray.cluster_utils import Cluster

    from orchestrator import driver

    # trials held 1 s each: one actor alone would need 32 s, so a slow-starting second node still gets work
    (tmp_path / "trace").mkdir()
    monkeypatch.setenv("ATLAS_TEST_TRACE", str(tmp_path / "trace"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setattr(driver, "run_trial", traced_trial)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        uri = f"sqlite:///{tmp_path}/m.db"
        # one CPU per node holds one actor per node (two actors on a 2-core machine), each with half a GPU
        outcome = run_sweep(smoke(cpu=1, gpu=0.5), tracking_uri=uri, address=cluster.address, out_dir=tmp_path)
        assert outcome.logged == 32 and not outcome.failed
        per_node = defaultdict(set)
        for r in children(sweep_runs(uri, "smoke")):
            assert r.data.tags["orchestrator.gpu_ids"] == "0"  # each node's own (fake) GPU
            per_node[r.data.tags["orchestrator.node"]].add(r.data.tags["orchestrator.worker"])
        assert len(per_node) == 2  # both nodes ran trials
        assert all(len(workers) == 1 for workers in per_node.values())
    finally:
        ray.shutdown()
        cluster.shutdown()


@ray.remote
def _niceness() -> int:
    return os.nice(0)


def test_a_local_ray_runs_its_workers_at_the_drivers_niceness(fresh_ray):
    """Ray's default worker_niceness (15) lets any process at nice 0 beside a sweep take the CPU from its actors:
    a 30 s screened sweep ran 5 min beside two busy loops. The sweep's own Ray runs them as nice as the driver."""
    with ray_session(None):
        assert ray.get(_niceness.remote()) == os.nice(0)


def test_an_actor_places_its_model_where_ray_assigned_it_and_falls_back_to_cpu(monkeypatch):
    """Ray hides all but the assigned GPUs (CUDA_VISIBLE_DEVICES), so 'cuda' is the actor's share; no CUDA -> CPU."""
    import torch

    from orchestrator import worker

    sweep = load_sweep(SMOKE)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(worker, "_MODEL", {})
    pack = [{"point": {"seed": 0, "family": "antonyms"}, "model": "tiny-llama"}]
    splits = {part.name: part.splits for part in sweep.parts}
    on_gpu = worker_settings(sweep.updated(resources=Resources(gpu=0.25)))
    ctx = worker.trial_context(on_gpu, pack, splits)
    assert ctx.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert worker.trial_context(worker_settings(sweep), pack, splits).model.device.type == "cpu"


# --- cluster.yaml: the cloud config and its on-prem variant, validated the way `ray up` validates them ----------------

def cluster_configs() -> tuple[dict, dict]:
    text = (REPO / "cluster.yaml").read_text()
    cloud = yaml.safe_load(text)
    block = text.split("# BEGIN local\n")[1].split("# END local")[0]
    local = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.splitlines()))
    replaced = ("provider", "auth", "available_node_types", "head_node_type")
    return cloud, {**{k: v for k, v in cloud.items() if k not in replaced}, **local}


def test_cluster_yaml_passes_the_cluster_launchers_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cloud, onprem = cluster_configs()
    for config in (cloud, onprem):
        validate_config(prepare_config(config))  # ray up's own steps: defaults merged, then the JSON schema
    with pytest.raises(Exception, match="setup_command"):
        validate_config(prepare_config({**cloud, "setup_command": []}))  # the check can fail
    assert cloud["provider"]["type"] == "aws" and onprem["provider"]["type"] == "local"
    gpu_types = [t for t in cloud["available_node_types"].values() if t.get("resources", {}).get("GPU")]
    assert gpu_types and cloud["available_node_types"][cloud["head_node_type"]]["resources"] == {"CPU": 0}
    prepared = prepare_config(onprem)
    workers = prepared["available_node_types"]["local.cluster.node"]["max_workers"]
    assert workers == len(onprem["provider"]["worker_ips"])
    setup = " ".join(cloud["setup_commands"])
    assert "-c ~/causal-atlas/constraints.txt -e ~/causal-atlas" in setup and "--python 3.11" in setup
    assert cloud["file_mounts"] == {"~/causal-atlas": "."}
    assert "--dashboard-host=127.0.0.1" in " ".join(cloud["head_start_ray_commands"])  # dashboard not exposed
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    assert pins["ray"] == ray.__version__  # the nodes get the driver's Ray
