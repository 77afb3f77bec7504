"""The record explains itself: the parent run holds each model's sizes, dtype and weights digest, and the report
reads a model's layer count from there, never from the model."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from interventions import models
from orchestrator.grid import expand
from orchestrator.report.record import read
from orchestrator.spec import load_sweep
from orchestrator.store import MODELS_TAG
from orchestrator.tracking import Tracker
from tests.conftest import spec


def hand_digest(module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def recorded(tmp_path):
    """A one-point ablation sweep of the tiny Qwen2 with its parent run and one logged trial."""
    (tmp_path / "s.yaml").write_text(spec("ablation", "facts", model="tiny-qwen2", layer=[1], component=["mlp"],
                                          method=["zero"]))
    sweep = load_sweep(tmp_path / "s.yaml")
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", sweep)
    points = expand(sweep)
    parent = tracker.start_parent(len(points), len(points))
    for point in points:
        tracker.log_trial(parent, point, dict.fromkeys(sweep.kind.metrics, 0.5), {})
    tracker.end_parent(parent, "FINISHED")
    return tracker, parent


def test_the_parent_run_records_each_models_sizes_dtype_and_weights_digest(recorded):
    tracker, parent = recorded
    run = tracker.client.get_run(parent)
    module = models.load("tiny-qwen2").module
    config = module.config
    want = {"n_layers": config.num_hidden_layers, "d_model": config.hidden_size,
            "n_heads": config.num_attention_heads, "n_params": sum(p.numel() for p in module.parameters()),
            "dtype": "float32", "weights": "state_dict:" + hand_digest(module)}
    assert json.loads(run.data.tags[MODELS_TAG]) == {"tiny-qwen2": want}
    assert {k: run.data.params[k] for k in ("n_layers", "d_model", "n_heads", "n_params", "weights")} == {
        k: str(v) for k, v in want.items() if k != "dtype"}


def test_a_packs_digest_is_its_checked_gguf_and_a_folders_its_safetensors(tmp_path):
    assert models.weights_digest("smollm2-135m") == "gguf:" + models.PACKS.get("smollm2-135m").sha256
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    want = hashlib.sha256(hashlib.sha256(b"weights").hexdigest().encode()).hexdigest()
    assert models.weights_digest(str(tmp_path)) == "safetensors:" + want


def test_the_report_reads_the_layer_count_from_the_record_not_the_model(recorded, monkeypatch):
    tracker, _ = recorded

    def no_model(*args, **kwargs):
        raise AssertionError("the report read the model")

    monkeypatch.setattr(models, "describe", no_model)
    monkeypatch.setattr(models, "load", no_model)
    record = read(tracker.uri, "facts")
    assert record.n_layers == 4 and not [n for n in record.notes if "n_layers" in n]  # layer 1 + 1 would say 2
