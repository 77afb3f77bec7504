"""Ablation and skip sweeps end to end through the CLI: one run per point, hub metrics and tables on the parent."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import children, cli, sweep_runs, swept

pytestmark = pytest.mark.slow  # Ray, subprocess CLIs or servers, end to end

ABLATION = """\
name: tiny_atlas
model: tiny-llama
kind: ablation
n_train: 6
n_eval: 4
axes:
  seed: [0, 1]
  family: [antonyms, copying]
  component: [layer, head]
  layer: [0, 1, 2, 3]
  method: [mean, clean_to_corrupt]
  head: [2]
"""
SKIP = """\
name: tiny_skip
model: tiny-llama
kind: skip
n_train: 2
n_eval: 4
axes:
  seed: [0, 1]
  family: [antonyms]
  skip: [[], [1], [1, 2]]
"""


@pytest.fixture(scope="module")
def atlas_run(tmp_path_factory):
    return swept(tmp_path_factory.mktemp("atlas"), "atlas", ABLATION)


def test_ablation_sweep_logs_each_point_once_with_its_axes(atlas_run):
    cwd, _ = atlas_run
    trials = children(sweep_runs(cwd, "tiny_atlas"))
    assert len(trials) == 2 * 2 * (4 * 2 + 4 * 2)
    assert len({r.data.tags["orchestrator.trial_id"] for r in trials}) == len(trials)
    heads = [r for r in trials if r.data.params["component"] == "head"]
    assert {r.data.params["head"] for r in heads} == {"2"}
    assert all("head" not in r.data.params for r in trials if r.data.params["component"] == "layer")
    patched = [r for r in trials if r.data.params["method"] == "clean_to_corrupt"]
    assert all("recovery" in r.data.metrics for r in patched)
    assert all("recovery" not in r.data.metrics for r in trials if r.data.params["method"] == "mean")


def test_hub_is_logged_on_the_parent_and_matches_the_runs(atlas_run):
    cwd, done = atlas_run
    everything = sweep_runs(cwd, "tiny_atlas")
    parent = next(r for r in everything if r.data.tags.get("orchestrator.role") == "parent")
    frame = pd.DataFrame([{**r.data.params, "kl": r.data.metrics["kl"]} for r in children(everything)])
    frame = frame[(frame.component == "layer") & (frame.method == "mean")]
    per_seed = frame.assign(layer=frame.layer.astype(int)).groupby(["seed", "layer"]).kl.mean()
    for seed in ("0", "1"):
        assert parent.data.metrics[f"hub_layer_seed_{seed}"] == per_seed[seed].idxmax()
    hubs = [parent.data.metrics[f"hub_layer_seed_{s}"] for s in ("0", "1")]
    assert parent.data.metrics["hub_layer_std"] == pytest.approx(pd.Series(hubs).std(ddof=1))
    assert "hub per seed" in done.stdout and "rank stability" in done.stdout
    stability = pd.read_parquet(cwd / "mlruns" / "reports" / "tiny_atlas" / "rank_stability.parquet")
    assert set(stability.component) == {"layer"} and len(stability) == 1  # mean vs clean_to_corrupt
    artifacts = {a.path for a in __import__("mlflow").tracking.MlflowClient(
        f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}").list_artifacts(parent.info.run_id)}
    assert {"hubs.parquet", "rank_stability.parquet", "aggregate.parquet"} <= artifacts


def test_skip_sweep_records_layer_sets_and_groups_them(tmp_path):
    (tmp_path / "skip.yaml").write_text(SKIP)
    done = cli(tmp_path, "sweep", "skip.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    trials = children(sweep_runs(tmp_path, "tiny_skip"))
    assert sorted(r.data.params["skip"] for r in trials) == sorted(["[]", "[1]", "[1, 2]"] * 2)
    nothing = [r for r in trials if r.data.params["skip"] == "[]"]
    assert all(r.data.metrics["kl"] < 1e-9 and r.data.metrics["top5_overlap"] == 1 for r in nothing)
    table = pd.read_parquet(tmp_path / "mlruns" / "reports" / "tiny_skip" / "aggregate.parquet")
    assert sorted(json.loads(s) for s in table.skip) == [[], [1], [1, 2]]
    assert (table.kl_n == 2).all()
