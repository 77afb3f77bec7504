"""Adapters against independent computations: peft's own delta weights and loader, full SVDs, plain forwards, scipy.

Tiny seeded models for most checks (a few optimiser steps with a large learning rate, so
that the adapters are far from zero), the embedded model for one, and one Ray sweep.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from scipy import stats

from adapters.cross_model import cross_model_trial
from adapters.kind import ADAPTER_OPS, adapter_trial
from adapters.lora import attached, load_folder, lora_layers, tuner_layers
from adapters.runs import adapted, layer_effects, layers_ablated
from adapters.sources import adapter_for, target_names
from adapters.surgery import low_rank, truncated
from adapters.training import LoraSettings, adapter_dir, cached_or_trained, train
from interventions import models
from interventions.forward import clean_run
from interventions.patching import patched_logits, recovery
from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import bad_input, children, cli, context, split, store, sweep_runs

TRAIN = dict(adapter="train", rank=4, alpha=8.0, steps=4, lr=0.05, targets="default")


@pytest.fixture(autouse=True)
def adapter_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_ADAPTER_CACHE", str(tmp_path / "adapters"))


def settings(model, rank=4, steps=4, lr=0.05, targets="default") -> LoraSettings:
    return LoraSettings(rank, 2.0 * rank, steps, lr, target_names(targets, model.arch))


def base_logits(model, ctx) -> torch.Tensor:
    return clean_run(model, ctx.family.eval_batch)[0]


def test_a_fresh_lora_changes_nothing(tiny_model):
    ctx = context(tiny_model)
    with attached(tiny_model, None, settings(tiny_model).config()) as peft_model:
        layers = lora_layers(peft_model.base_model.model).values()
        assert all(float(layer.lora_B["default"].weight.detach().abs().max()) == 0 for layer in layers)
        fresh = base_logits(tiny_model, ctx)
    assert torch.nn.functional.kl_div(fresh.log_softmax(-1), ctx.family.clean_logits.log_softmax(-1), log_target=True,
                                      reduction="batchmean") < 1e-7


def test_training_is_deterministic_bitwise_and_fits(tiny_llama):
    data = split(tiny_llama)
    one, two = (train(tiny_llama, data, settings(tiny_llama, steps=6, lr=0.01), "k") for _ in range(2))
    assert one.weights.keys() == two.weights.keys() and len(one.weights) == 2 * 4 * tiny_llama.n_layers
    assert all(torch.equal(one.weights[k], two.weights[k]) for k in one.weights)
    assert one.loss == two.loss and one.loss[-1] < one.loss[0]
    other = train(tiny_llama, split(tiny_llama, seed=1), settings(tiny_llama, steps=6, lr=0.01), "k")
    assert not all(torch.equal(one.weights[k], other.weights[k]) for k in one.weights)


def test_rank_truncation_at_full_rank_is_the_adapter_and_at_zero_the_base(tiny_model):
    ctx = context(tiny_model)
    full = adapter_for(ctx, **TRAIN)[0]
    full_logits = adapted(ctx, full).logits
    assert (full_logits - ctx.family.clean_logits).abs().max() > 1e-2  # the adapter does something
    same = adapter_trial(ctx, operation="rank_truncation", keep_rank=4, **TRAIN).metrics
    assert abs(same["kl"]) <= 1e-4 and abs(same["ld_drop"]) <= 1e-4
    assert (adapted(ctx, truncated(full, 4), keep=False).logits - full_logits).abs().max() <= 1e-4
    zero = adapted(ctx, truncated(full, 0), keep=False).logits
    assert torch.allclose(zero, ctx.family.clean_logits, atol=1e-5)


@pytest.mark.parametrize("keep", [0, 1, 3, 5])
def test_low_rank_is_the_truncated_svd_of_b_a(keep):
    g = torch.Generator().manual_seed(keep)
    a, b = torch.randn(5, 12, generator=g), torch.randn(9, 5, generator=g)
    u, s, vh = torch.linalg.svd((b @ a).double())
    best = (u[:, :keep] * s[:keep]) @ vh[:keep]
    a_new, b_new = low_rank(a, b, keep)
    assert a_new.shape == a.shape and b_new.shape == b.shape
    assert torch.allclose((b_new @ a_new).double(), best, atol=1e-5)


def test_ablating_the_adapter_in_every_layer_is_the_base_model(tiny_model):
    ctx = context(tiny_model)
    full = adapter_for(ctx, **TRAIN)[0]
    every = layers_ablated(ctx, full, set(range(tiny_model.n_layers)))
    assert torch.allclose(every, ctx.family.clean_logits, atol=1e-5)
    one = adapter_trial(ctx, operation="layer_ablation", layer=1, **TRAIN).metrics
    assert one["kl"] == pytest.approx(layer_effects(ctx, full)[1], abs=1e-6) and one["kl"] > 0


def test_norm_profile_equals_peft_delta_weights(tiny_model):
    ctx = context(tiny_model)
    out = adapter_trial(ctx, operation="norm_profile", **TRAIN)
    full = adapter_for(ctx, **TRAIN)[0]
    with attached(tiny_model, full) as peft_model:
        direct = {path: float(torch.linalg.norm(layer.get_delta_weight("default").detach()))
                  for path, layer in lora_layers(peft_model.base_model.model).items()}
    for module in ("q_proj", "k_proj", "v_proj", "o_proj"):
        expected = [direct[f"model.layers.{i}.self_attn.{module}"] for i in range(tiny_model.n_layers)]
        assert out.steps[f"norm_{module}"] == pytest.approx(expected, rel=1e-5)
    table = pd.read_parquet(io.BytesIO(out.artifacts["norm_profile.parquet"]))
    assert len(table) == 4 * tiny_model.n_layers
    assert out.metrics["norm_total"] == pytest.approx(np.sqrt(sum(v * v for v in direct.values())), rel=1e-5)


def test_norm_effect_correlates_the_per_layer_profiles(tiny_llama):
    ctx = context(tiny_llama)
    out = adapter_trial(ctx, operation="norm_effect", **TRAIN)
    norms, effects = out.steps["norm_layer"], out.steps["effect_layer"]
    assert out.metrics["pearson"] == pytest.approx(np.corrcoef(norms, effects)[0, 1], abs=1e-9)
    assert out.metrics["spearman"] == pytest.approx(stats.spearmanr(norms, effects).statistic, abs=1e-9)
    for layer in range(tiny_llama.n_layers):
        single = adapter_trial(ctx, operation="layer_ablation", layer=layer, **TRAIN).metrics["kl"]
        assert effects[layer] == pytest.approx(single, abs=1e-7)


def test_cross_model_patching_at_the_last_layer_recovers_everything(tiny_model):
    ctx = context(tiny_model)
    last = cross_model_trial(ctx, layer=tiny_model.n_layers - 1, **TRAIN)
    assert abs(last.metrics["ld_gap"]) > 1e-3
    assert last.metrics["recovery"] == pytest.approx(1.0, abs=1e-4) and abs(last.metrics["kl"]) < 1e-6
    assert set(last.artifacts) == {"adapter_model.safetensors", "adapter_config.json"}
    first = cross_model_trial(ctx, layer=0, **TRAIN).metrics
    assert (last.metrics["depth"], first["depth"]) == ((tiny_model.n_layers - 1) / tiny_model.n_layers, 0.0)
    assert first["recovery"] != pytest.approx(1.0, abs=1e-3)


def test_patching_the_base_into_the_base_changes_nothing(tiny_model):
    ctx = context(tiny_model)
    run = ctx.family
    ld = lambda x: float((x.gather(-1, run.target[:, None]) - x.gather(-1, run.distractor[:, None])).mean())  # noqa
    for layer in range(tiny_model.n_layers):
        patched = patched_logits(tiny_model, run.clean_resid(layer), run.eval_batch, layer)
        assert torch.allclose(patched, run.clean_logits, atol=1e-5)
        assert recovery(ld(patched), ld(run.clean_logits), ld(run.clean_logits) + 3.0) == pytest.approx(0, abs=1e-5)


def test_adapters_never_leak_into_the_actor_model(tiny_llama):
    fresh = models.load("tiny-llama")
    ctx = context(tiny_llama)
    ctx.options = {"checkpoints": {"every": 2}}  # read by lock_in only
    names = [n for n, _ in tiny_llama.module.named_modules()]
    extras = {"layer_ablation": [{"layer": 0}], "rank_truncation": [{"keep_rank": 2}],
              "compat": [{"target_model": "tiny-llama"}, {"target_model": "tiny-qwen2"}]}
    for operation in ADAPTER_OPS.names():  # every registered operation, including ones added later
        for extra in extras.get(operation, [{}]):
            adapter_trial(ctx, operation=operation, **TRAIN, **extra)
            assert tuner_layers(tiny_llama.module) == 0 and not hasattr(tiny_llama.module, "peft_config")
    cross_model_trial(ctx, layer=2, **TRAIN)
    with pytest.raises(RuntimeError, match="half-way"):
        with attached(tiny_llama, adapter_for(ctx, **TRAIN)[0]):
            raise RuntimeError("a trial that fails half-way")
    assert tuner_layers(tiny_llama.module) == 0
    assert [n for n, _ in tiny_llama.module.named_modules()] == names
    theirs, ours = fresh.module.state_dict(), tiny_llama.module.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert not any(p.requires_grad for p in tiny_llama.module.parameters())
    next_ctx = context(tiny_llama, family="capitalization")
    assert torch.equal(next_ctx.family.clean_logits, context(fresh, family="capitalization").family.clean_logits)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' notes from inside PeftModel.from_pretrained
def test_adapters_are_trained_once_and_saved_as_peft_folders(tiny_llama, tmp_path):
    data, how = split(tiny_llama), []
    for _ in range(2):
        adapter, source = cached_or_trained(tiny_llama, data, settings(tiny_llama))
        how.append(source)
    assert how == ["trained", "disk"]
    folder = adapter_dir() / adapter.key
    again = load_folder(folder, adapter.key)
    assert all(torch.equal(again.weights[k], v) for k, v in load_file(folder / "adapter_model.safetensors").items())
    assert again.loss == adapter.loss and len(again.loss) == 4
    ctx = context(tiny_llama)
    assert adapter_for(ctx, **TRAIN)[1] == "disk" and adapter_for(ctx, **TRAIN)[1] == "memory"
    peft_model = PeftModel.from_pretrained(tiny_llama.module, str(folder))  # peft's own loader reads our folder
    try:
        theirs = clean_run(tiny_llama, ctx.family.eval_batch)[0]
    finally:
        peft_model.unload()
    assert torch.allclose(theirs, adapted(ctx, adapter).logits, atol=1e-6)
    brought = adapter_trial(ctx, operation="train", adapter=str(folder))
    assert brought.tags["adapter_source"] == "folder" and brought.metrics["train_loss_last"] == adapter.loss[-1]


def test_compat_records_a_reason_instead_of_crashing(tiny_llama):
    ctx = context(tiny_llama)
    same = adapter_trial(ctx, operation="compat", target_model="tiny-llama", **TRAIN)
    assert same.metrics["compatible"] == 1 and same.metrics["kl"] == pytest.approx(same.metrics["kl_adapter"])
    for target, reason in [("tiny-qwen2", "architecture: the adapter is for llama, tiny-qwen2 is qwen2"),
                           ("smollm2-135m", "shape: model.layers.0.self_attn.k_proj is 576->192 in smollm2-135m")]:
        out = adapter_trial(ctx, operation="compat", target_model=target, **TRAIN)
        assert out.metrics["compatible"] == 0 and "kl" not in out.metrics
        assert out.tags["compat_reason"].startswith(reason)


def test_the_embedded_model(smollm2):
    """One small adapter on SmolLM2: no-op init, peft norms, last-layer recovery, nothing left behind."""
    ctx = context(smollm2, family="capitalization", n_train=4, n_eval=3)
    small = dict(TRAIN, rank=2, alpha=4.0, steps=2, lr=0.01, targets="q_proj+v_proj")
    norms = adapter_trial(ctx, operation="norm_profile", **small)
    full = adapter_for(ctx, **small)[0]
    with attached(smollm2, full) as peft_model:
        direct = {p: float(torch.linalg.norm(x.get_delta_weight("default").detach()))
                  for p, x in lora_layers(peft_model.base_model.model).items()}
    assert norms.steps["norm_v_proj"] == pytest.approx([direct[f"model.layers.{i}.self_attn.v_proj"]
                                                        for i in range(30)], rel=1e-5)
    assert len(norms.steps) == 3  # norm_layer, norm_q_proj, norm_v_proj
    last = cross_model_trial(ctx, layer=29, **small).metrics
    assert last["recovery"] == pytest.approx(1.0, abs=1e-3) and abs(last["kl"]) < 1e-5
    zero = adapted(ctx, truncated(full, 0), keep=False).logits
    assert torch.allclose(zero, ctx.family.clean_logits, atol=1e-4)  # rank 0 = the base model
    assert tuner_layers(smollm2.module) == 0
    assert torch.allclose(base_logits(smollm2, ctx), ctx.family.clean_logits, atol=1e-5)


GOOD = """\
name: adapters_bad_input
model: tiny-llama
kind: adapter
n_train: 4
n_eval: 2
axes:
  seed: [0]
  family: [antonyms]
  operation: [norm_profile, rank_truncation, layer_ablation]
  rank: [2, 4]
  steps: [3]
  keep_rank: [0, 2, 4]
  layer: [0, 3]
"""

CASES = [
    # (id, spec text, field the message must name, words in the reason)
    ("unknown target module", GOOD + "  targets: [q_proj+qq_proj]\n", "axes.targets.0",
     "unknown target module 'qq_proj'"),
    ("rank 0", GOOD.replace("rank: [2, 4]", "rank: [0, 4]"), "axes.rank.0", "greater than or equal to 1"),
    ("negative rank", GOOD.replace("rank: [2, 4]", "rank: [-2]"), "axes.rank.0", "greater than or equal to 1"),
    ("keep_rank above rank", GOOD.replace("[0, 2, 4]", "[0, 8]"), "axes.keep_rank.1", "keep_rank 8 > rank 4"),
    ("steps 0", GOOD.replace("steps: [3]", "steps: [0]"), "axes.steps.0", "greater than or equal to 1"),
    ("missing adapter folder", GOOD + "  adapter: [nowhere]\n", "axes.adapter.0", "no such adapter folder"),
    ("adapter without safetensors", GOOD + "  adapter: [binonly]\n", "axes.adapter.0", "no adapter_model.safetensors"),
    ("adapter is a file", GOOD + "  adapter: [spec.yaml]\n", "axes.adapter.0", "is not a peft adapter folder"),
    ("unknown operation", GOOD.replace("norm_profile,", "norm_profil,"), "axes.operation.0",
     "did you mean 'norm_profile'"),
    ("ablation without layers", GOOD.replace("  layer: [0, 3]\n", ""), "axes.layer", "operation layer_ablation needs"),
    ("layer out of range", GOOD.replace("[0, 3]", "[0, 4]"), "axes.layer.1", "outside 0..3"),
    ("unused axis", GOOD + "  target_model: [tiny-qwen2]\n", "axes.target_model", "only used by operation compat"),
    ("unknown target model",
     GOOD.replace("layer_ablation]", "layer_ablation, compat]") + "  target_model: [tiny-lama]\n",
     "axes.target_model.0", "unknown model 'tiny-lama'"),
    ("cross-model layer missing", GOOD.replace("kind: adapter", "kind: cross_model_patch").split("  operation")[0],
     "axes.layer", "Field required"),
]


@pytest.mark.parametrize("spec_text,field,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_no_store(tmp_path, monkeypatch, capsys, spec_text, field, reason):
    files = {"binonly/adapter_model.bin": b"\0", "binonly/adapter_config.json": "{}"}  # a pickle, never loaded
    err = bad_input(tmp_path, monkeypatch, capsys, spec_text, files)
    assert re.match(r"^error: spec\.yaml: [\w.\- ]+: .+", err), err
    assert f"spec.yaml: {field}:" in err and reason in err, err
    assert not (tmp_path / "adapters").exists()


def test_the_grid_has_keep_rank_up_to_each_rank_and_starts_on_every_adapter(tmp_path):
    (tmp_path / "spec.yaml").write_text(GOOD)
    points = [p.values for p in expand(load_sweep(tmp_path / "spec.yaml"))]
    per_rank = {r: [p for p in points if p["rank"] == r] for r in (2, 4)}
    assert [p.get("keep_rank") for p in per_rank[2] if p["operation"] == "rank_truncation"] == [0, 2]
    assert [p.get("keep_rank") for p in per_rank[4] if p["operation"] == "rank_truncation"] == [0, 2, 4]
    assert len(points) == 2 * (1 + 2) + 2 + 3 and len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert [p["rank"] for p in points[:2]] == [2, 4]  # two actors train two adapters at once
    assert all("layer" not in p for p in points if p["operation"] != "layer_ablation")


SWEEP = """\
name: adapters_e2e
model: tiny-llama
kind: adapter
n_train: 4
n_eval: 3
axes:
  seed: [0]
  family: [antonyms]
  operation: [train, norm_profile, compat]
  rank: [2]
  steps: [3]
  lr: [0.05]
  target_model: [tiny-llama, tiny-qwen2]
"""


@pytest.mark.slow
def test_an_adapter_sweep_logs_curves_profiles_reasons_and_the_adapter(tmp_path):
    (tmp_path / "spec.yaml").write_text(SWEEP)
    done = cli(tmp_path, "sweep", "spec.yaml", env={"ATLAS_ADAPTER_CACHE": str(tmp_path / "adapters")})
    assert done.returncode == 0, done.stdout + done.stderr
    kids = {(r.data.params["operation"], r.data.params.get("target_model")): r
            for r in children(sweep_runs(tmp_path, "adapters_e2e"))}
    assert len(kids) == 4
    client = store(tmp_path)
    trained = kids[("train", None)]
    loss = client.get_metric_history(trained.info.run_id, "train_loss")
    assert [m.step for m in loss] == [0, 1, 2] and trained.data.metrics["train_loss_last"] == loss[-1].value
    local = client.download_artifacts(trained.info.run_id, "", str(tmp_path / "got"))
    assert load_folder(Path(local), "x").weights.keys()
    profile = client.get_metric_history(kids[("norm_profile", None)].info.run_id, "norm_layer")
    assert sorted(m.step for m in profile) == [0, 1, 2, 3]
    assert kids[("compat", "tiny-qwen2")].data.tags["orchestrator.compat_reason"].startswith("architecture")
    assert kids[("compat", "tiny-llama")].data.metrics["compatible"] == 1
    assert {r.data.tags["orchestrator.adapter"] for r in kids.values()} == {trained.data.tags["orchestrator.adapter"]}


def test_two_actors_asking_for_the_same_adapter_train_it_once(tiny_llama):
    from concurrent.futures import ThreadPoolExecutor

    data = split(tiny_llama, seed=2)
    with ThreadPoolExecutor(2) as pool:  # the lock is per open file, so two threads contend like two processes
        found = list(pool.map(lambda _: cached_or_trained(tiny_llama, data, settings(tiny_llama)), range(2)))
    assert sorted(how for _, how in found) == ["disk", "trained"]
    assert all(torch.equal(found[0][0].weights[k], found[1][0].weights[k]) for k in found[0][0].weights)
    assert tuner_layers(tiny_llama.module) == 0


def test_a_brought_adapter_folder_is_found_relative_to_the_spec(tiny_llama, tmp_path, monkeypatch):
    adapter, _ = cached_or_trained(tiny_llama, split(tiny_llama), settings(tiny_llama))
    (tmp_path / "sub").mkdir()
    adapter.save(tmp_path / "sub" / "mine")
    spec = GOOD.replace("operation: [norm_profile, rank_truncation, layer_ablation]", "operation: [norm_profile]")
    spec = spec.replace("  keep_rank: [0, 2, 4]\n  layer: [0, 3]\n", "  adapter: [mine, train]\n")
    (tmp_path / "sub" / "spec.yaml").write_text(spec)
    monkeypatch.chdir(tmp_path)
    points = [p.values for p in expand(load_sweep(tmp_path / "sub" / "spec.yaml"))]
    assert points[0] == {"seed": 0, "family": "antonyms", "operation": "norm_profile",
                         "adapter": str(tmp_path / "sub" / "mine")}  # no training axes for a brought adapter
    assert [p.get("rank") for p in points] == [None, 2, 4]
