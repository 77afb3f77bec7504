"""Scheduling on Ray: fractional GPUs pack several model-holding actors on one GPU; a two-node cluster runs a sweep."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest
import ray
from mlflow.tracking import MlflowClient

from orchestrator.runner import run_sweep
from orchestrator.spec import Resources, load_sweep
from tests.conftest import REPO

SMOKE = REPO / "sweeps" / "smoke.yaml"


def finished_children(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=1000)
    return [r for r in runs if r.data.tags.get("orchestrator.role") == "trial"]


def smoke(cpu: float, gpu: float):
    sweep = load_sweep(SMOKE)
    return replace(sweep, spec=sweep.spec.model_copy(update={"resources": Resources(cpu=cpu, gpu=gpu)}))


@pytest.fixture
def fresh_ray():
    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_quarter_gpus_pack_four_actors_on_one_gpu(tmp_path, fresh_ray):
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # a fake GPU: Ray only counts it
    uri = f"sqlite:///{tmp_path}/m.db"
    outcome = run_sweep(smoke(cpu=0.25, gpu=0.25), tracking_uri=uri, out_dir=tmp_path)
    assert outcome.logged == 32 and not outcome.failed
    runs = finished_children(uri, "smoke")
    loads = defaultdict(set)
    for r in runs:
        assert r.data.tags["orchestrator.gpu_ids"] == "0"  # every actor was given a share of GPU 0
        loads[r.data.tags["orchestrator.worker"]].add(r.data.tags["orchestrator.model_loads"])
    assert 2 < len(loads) <= 4  # more actors than CPUs-per-trial alone would allow ... at most 4 per GPU
    assert all(v == {"1"} for v in loads.values())


def test_a_two_node_cluster_runs_the_sweep(tmp_path, fresh_ray):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        uri = f"sqlite:///{tmp_path}/m.db"
        outcome = run_sweep(load_sweep(SMOKE), tracking_uri=uri, address=cluster.address, out_dir=tmp_path)
        assert outcome.logged == 32 and not outcome.failed
        nodes = {r.data.tags["orchestrator.node"] for r in finished_children(uri, "smoke")}
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
