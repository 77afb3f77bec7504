"""A steering sweep with the prompting baseline, generation and a layer set, end to end through the CLI: every
grid point (the baseline's too) once FINISHED, items.parquet and vectors.safetensors on the parent run (carried
over on a rerun), the saved vectors loading back equal, and a report that reads it all."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from interventions.context import FamilyRun, TrialContext
from interventions.models import load
from interventions.steering import steering_vector
from orchestrator import vectors
from orchestrator.grid import expand
from orchestrator.report import build, read, write_report
from orchestrator.spec import load_sweep
from tests.conftest import children, cli, role, spec, sweep_runs, swept

pytestmark = pytest.mark.slow  # Ray, subprocess CLIs or servers, end to end

SPEC = spec("steering", "field", n_train=4, n_eval=3, seed=[0, 1], family=["antonyms", "copying"],
            layer=[1, [0, 2]], strength=[-1.0, 0.5], vector_type=["mean_diff", "random"],
            extra={"resources": {"cpu": 2, "gpu": 0}, "baseline": {"shots": 2}, "generate": {"tokens": 4}})


@pytest.fixture(scope="module")
def field_run(tmp_path_factory):
    return swept(tmp_path_factory.mktemp("field"), "field", SPEC)


def test_every_point_and_the_baseline_is_one_finished_run(field_run):
    cwd, done = field_run
    grid = expand(load_sweep(cwd / "field.yaml"))
    assert len(grid) == 2 * 2 * (2 * 2 * 2 + 1) == 36
    kids = children(sweep_runs(cwd, "field"))
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in kids)
    assert set(ids) == {p.trial_id for p in grid} and max(ids.values()) == 1
    prompt = [r for r in kids if r.data.params["vector_type"] == "prompt"]
    assert len(prompt) == 4 and all("layer" not in r.data.params and "strength" not in r.data.params for r in prompt)
    assert {r.data.params["shots"] for r in prompt} == {"2"}
    assert {"ld_delta", "accuracy_steered", "kl", "anti_steerable_fraction"} <= set(prompt[0].data.metrics)
    assert "neutral_kl" not in prompt[0].data.metrics
    sets = [r for r in kids if r.data.params.get("layer") == "[0, 2]"]
    assert len(sets) == 16 and all(r.data.metrics["depth"] == pytest.approx(0.25) for r in sets)
    steered = next(r for r in kids if r.data.params.get("layer") == "1")
    assert {"neutral_kl", "fluency_nll", "repetition", "distinct_2", "target_hit_rate",
            "fluency_nll_clean"} <= set(steered.data.metrics)
    texts = MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}").list_artifacts(steered.info.run_id)
    assert [a.path for a in texts] == ["continuations.txt"]
    assert "control (vector_type=random)" in done.stdout and "largest |ld_delta - control| first" in done.stdout


def test_items_parquet_holds_every_points_per_item_values(field_run):
    cwd, _ = field_run
    table = pd.read_parquet(cwd / "mlruns" / "reports" / "field" / "items.parquet")
    kids = {r.data.tags["orchestrator.trial_id"]: r for r in children(sweep_runs(cwd, "field"))}
    assert len(table) == 36 * 3 and set(table["trial_id"]) == set(kids)
    assert {"trial_id", "seed", "family", "vector_type", "item", "ld_clean", "ld_steered"} <= set(table.columns)
    for trial_id, rows in table.groupby("trial_id"):
        assert sorted(rows["item"]) == [0, 1, 2]
        shift = rows["ld_steered"] - rows["ld_clean"]
        assert shift.mean() == pytest.approx(kids[trial_id].data.metrics["ld_delta"], abs=1e-6)
        anti = kids[trial_id].data.metrics["anti_steerable_fraction"]
        strength = float(kids[trial_id].data.params.get("strength", 1.0))
        assert anti == pytest.approx(float((np.sign(strength) * shift < 0).mean()))


def test_saved_vectors_load_back_equal_to_the_vectors_the_trials_used(field_run, monkeypatch):
    cwd, _ = field_run
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = cwd / "mlruns" / "reports" / "field" / "vectors.safetensors"
    tensors = load_file(str(path))
    assert len(tensors) == 2 * 2 * 3 * 3  # (seed, family) x layers 0, 1, 2 x (mean_diff, random, r_L)
    sweep = load_sweep(cwd / "field.yaml")
    model = load("tiny-llama")
    for (family, seed), split in sweep.parts[0].splits.items():
        ctx = TrialContext(model, seed, FamilyRun(model, split))
        for layer in (0, 1, 2):
            saved = vectors.load("field", family=family, seed=seed, layer=layer, vector_type="mean_diff")
            assert torch.equal(saved.unit, tensors[f"{family}/seed={seed}/layer={layer}/mean_diff"])
            assert torch.allclose(saved.unit, steering_vector(ctx, layer, "mean_diff"), atol=1e-6)
            assert saved.r_l == pytest.approx(ctx.family.resid_norm(layer), rel=1e-5)


def test_a_rerun_runs_nothing_and_its_parent_still_holds_both_files(field_run):
    cwd, _ = field_run
    before = pd.read_parquet(cwd / "mlruns" / "reports" / "field" / "items.parquet")
    again = cli(cwd, "sweep", "field.yaml")
    assert again.returncode == 0 and "running" not in again.stdout, again.stdout + again.stderr
    found = sweep_runs(cwd, "field")
    assert len(children(found)) == 36
    newest = max(role(found, "parent"), key=lambda r: r.info.start_time)
    client = MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    assert {"items.parquet", "vectors.safetensors"} <= {a.path for a in client.list_artifacts(newest.info.run_id)}
    after = pd.read_parquet(client.download_artifacts(newest.info.run_id, "items.parquet", str(cwd)))
    key = ["trial_id", "item"]
    pd.testing.assert_frame_equal(after.sort_values(key).reset_index(drop=True),
                                  before.sort_values(key).reset_index(drop=True), check_like=True)


def test_the_report_reads_the_baseline_items_geometry_and_generation(field_run):
    cwd, _ = field_run
    uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
    built = write_report(uri, "field", cwd / "report", log=False)
    ids = [s.id for s in built.figures]
    assert ids == ["steering_heatmap", "steering_geometry", "steering_items", "steering_generation"]
    heat = built.figures[0].figure
    rows = [t.get_text() for t in heat.axes[0].get_yticklabels()]
    assert rows == ["1", "0+2"]  # the layer set after the single layers
    assert any(line.get_gid() == "prompt" for ax in heat.axes for line in ax.lines)
    for family in ("antonyms", "copying"):  # a card against prompting, or a note why there is none
        assert any(f"On {family}, " in c.claim and "2-shot prompting" in c.claim for c in built.cards) or any(
            n.startswith(f"{family}: no steering cell") for n in build(read(uri, "field")).notes)
    assert all("held-out" in c.claim for c in built.cards)
