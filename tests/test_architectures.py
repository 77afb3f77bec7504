"""One correctness suite, parametrized over the architecture table: each family's seeded tiny model
(`tiny-<model_type>`, 4 layers, d_model 64; sliding windows shorter than the prompts) against plain HF
forwards with hand-written hooks (tests/oracle.py), one prompt at a time."""
from __future__ import annotations

import pytest
import torch

from adapters.lora import attached, tuner_layers
from adapters.sources import check_targets, layer_linears, target_names
from adapters.training import LoraSettings, train
from interventions import models
from interventions.ablation import ABLATIONS, ablated_logits
from interventions.architectures import ARCHITECTURES, part
from interventions.components import COMPONENTS, Site
from interventions.context import FamilyRun, TrialContext
from interventions.families import Split
from interventions.forward import clean_run, encode, run_from
from interventions.hooks import count_hooks
from interventions.kinds import run_kind
from interventions.registry import AtlasError
from interventions.skipping import exit_logits, skipped_logits
from tests import oracle
from tests.conftest import context, split
from tests.oracle import SEED, VALUES, sites

PROMPTS = ["The capital of France is", "Hi", "one two three four five six seven eight"]


@pytest.fixture(scope="module", params=ARCHITECTURES.names())
def model(request):
    yield models.load(f"tiny-{request.param}")
    VALUES.clear()  # the oracle's cache is keyed by id(model): the next model may get this one's id


def test_the_entry_names_modules_of_its_tiny_model(model):
    arch = model.arch
    assert model.name == f"tiny-{model.config.model_type}" and model.arch is ARCHITECTURES.get(model.config.model_type)
    for path in (arch.embed, arch.final_norm, arch.lm_head, *(p for p in (arch.rotary, arch.positions) if p)):
        part(model.module, path)
    for block in part(model.module, arch.layers):
        for path in (arch.attn_out, arch.attn, arch.mlp):
            part(block, path)


def test_attn_and_mlp_are_what_the_block_adds_to_the_residual(model):
    """DESIGN §4 on every layout (sandwich norms, parallel blocks): resid_post - resid_pre = attn + mlp."""
    for layer in (0, 3):
        for prompt in PROMPTS:
            parts = {c: oracle.component_value(model, prompt, layer, c) for c in ("layer", "attn", "mlp")}
            torch.testing.assert_close(parts["attn"] + parts["mlp"], parts["layer"], atol=1e-5, rtol=0)
            assert parts["attn"].abs().max() > 1e-3 and parts["mlp"].abs().max() > 1e-3


def test_run_from_every_layer_is_the_plain_forward_one_prompt_at_a_time(model):
    batch = encode(model.tokenizer, PROMPTS)
    logits, resid = clean_run(model, batch)
    alone = torch.stack([oracle.last_logits(model, p) for p in PROMPTS])
    torch.testing.assert_close(logits, alone, atol=1e-4, rtol=0)
    for layer in range(model.n_layers):
        torch.testing.assert_close(run_from(model, resid[layer], batch, layer + 1), logits, atol=1e-5, rtol=0)


def test_sliding_windows_and_soft_capping_are_exercised(model):
    """The tiny configs make every special path matter at the test prompts' lengths (so the checks can fail)."""
    config = model.config
    if "sliding_attention" in model.arch.attention(config):
        ids = torch.tensor([model.tokenizer(PROMPTS[2])["input_ids"]])
        assert ids.shape[1] > config.sliding_window
        with torch.no_grad():
            windowed = model.module(input_ids=ids).logits[0, -1]
            config.sliding_window = 512
            try:
                full = model.module(input_ids=ids).logits[0, -1]
            finally:
                config.sliding_window = ARCHITECTURES.get(config.model_type).tiny["sliding_window"]
        assert (windowed - full).abs().max() > 1e-3
    if getattr(config, "final_logit_softcapping", None):
        run = context(model).family
        capped = exit_logits(run, model.n_layers - 1)
        uncapped = part(model.module, model.arch.lm_head)(
            part(model.module, model.arch.final_norm)(run.clean_resid(model.n_layers - 1)[:, -1]))
        assert (capped - uncapped).abs().max() > 1e-3


@pytest.mark.parametrize("layer,strength,vector_type", [(0, 1.0, "mean_diff"), (2, -0.5, "random")])
def test_steering_equals_a_hand_written_hook(model, layer, strength, vector_type):
    out = oracle.assert_steering_equals_hook(context(model), layer, strength, vector_type)
    assert abs(out["ld_delta"]) > 1e-4 or out["kl"] > 1e-6  # the steering moved something


@pytest.mark.parametrize("method", ABLATIONS.names())
def test_every_ablation_method_on_every_component_matches_the_oracle(model, method):
    ctx = context(model, "copying", seed=0, n_train=6, n_eval=4)  # prompts of several lengths: padding
    oracle.assert_ablation_equals_oracle(ctx, (0, 2), method)


@torch.no_grad()
def identity_skip(model, prompt: str, skip: set[int]) -> torch.Tensor:
    """Full HF forward where each skipped block returns its own input."""
    blocks, inputs, hooks = part(model.module, model.arch.layers), {}, []
    for index in skip:
        hooks.append(blocks[index].register_forward_pre_hook(
            lambda m, a, k, i=index: inputs.__setitem__(i, a[0] if a else k["hidden_states"]), with_kwargs=True))
        hooks.append(blocks[index].register_forward_hook(
            lambda m, _in, out, i=index: (inputs[i], *out[1:]) if isinstance(out, tuple) else inputs[i]))
    try:
        return oracle.last_logits(model, prompt)
    finally:
        for h in hooks:
            h.remove()


def test_skipping_nothing_and_exiting_at_the_last_layer_are_the_full_model(model):
    ctx = context(model, "factual_recall", n_eval=5)
    run, last = ctx.family, model.n_layers - 1
    for kind, point in (("skip", {"skip": []}), ("early_exit", {"exit_layer": last})):
        out = run_kind(kind, ctx, point).metrics
        assert out["kl"] < 1e-6 and out["top1_agreement"] == 1 and out["top5_overlap"] == 1, kind
    torch.testing.assert_close(exit_logits(run, last), run.clean_logits, atol=1e-5, rtol=0)
    for skip in ({0}, {1, 3}):
        want = torch.stack([identity_skip(model, i.prompt, skip) for i in run.split.eval])
        torch.testing.assert_close(skipped_logits(run, frozenset(skip)), want, atol=1e-4, rtol=0)


POINTS = {
    "steering": [{"layer": 2, "strength": 1.0, "vector_type": "mean_diff"}],
    "ablation": [{"component": c, "layer": 2, "method": m, **({"head": 1} if c == "head" else {})}
                 for c in COMPONENTS for m in ("mean", "clean_to_corrupt")],
    "skip": [{"skip": [1, 2]}],
}


def test_prefix_reuse_on_and_off_give_the_same_results(model):
    for kind, points in POINTS.items():
        on = context(model, "copying", n_train=6, n_eval=4)
        off = context(model, "copying", n_train=6, n_eval=4)
        off.prefix_reuse = False
        for point in points:
            a, b = run_kind(kind, on, point).metrics, run_kind(kind, off, point).metrics
            for metric in a:
                assert b[metric] == pytest.approx(a[metric], abs=1e-4, rel=1e-4, nan_ok=True), (kind, point, metric)


def test_left_padding_does_not_change_results(model):
    whole = split(model, "factual_recall", n_eval=5)
    batched = FamilyRun(model, whole)
    assert (batched.eval_batch.mask == 0).any(), "the batch must actually be padded"
    alone = [FamilyRun(model, Split(whole.family, whole.seed, whole.train, (item,))) for item in whole.eval]
    steer = {"layer": 1, "strength": 0.75, "vector_type": "mean_diff"}
    together = run_kind("steering", TrialContext(model, 0, batched), steer).metrics
    one_by_one = [run_kind("steering", TrialContext(model, 0, run), steer).metrics for run in alone]
    for metric in ("ld_delta", "kl", "target_prob_clean", "target_prob_steered"):
        mean = sum(m[metric] for m in one_by_one) / len(one_by_one)
        assert together[metric] == pytest.approx(mean, abs=1e-4), metric
    for component in ("attn", "head", "resid"):
        site = Site(component, 1, (2,) if component == "head" else ())
        both = ablated_logits(batched, SEED, site, "mean")
        for i, run in enumerate(alone):
            torch.testing.assert_close(ablated_logits(run, SEED, site, "mean")[0], both[i], atol=1e-4, rtol=0)


def test_lora_with_the_default_targets_trains_and_unloads_cleanly(model):
    data = split(model)
    ctx = context(model)
    before = clean_run(model, ctx.family.eval_batch)[0]
    targets = target_names("default", model.arch)
    adapter = train(model, data, LoraSettings(4, 8.0, 6, 0.01, targets), "arch-suite")
    assert adapter.loss[-1] < adapter.loss[0]
    paths = adapter.pairs()
    assert len(paths) == len(targets) * model.n_layers
    assert all(p.startswith(model.arch.layers + ".") for p in paths)
    assert tuner_layers(model.module) == 0 and not hasattr(model.module, "peft_config")
    assert count_hooks(model.module) == 0
    assert torch.equal(clean_run(model, ctx.family.eval_batch)[0], before)  # unloaded: the model is as it was
    with attached(model, adapter):
        adapted = clean_run(model, ctx.family.eval_batch)[0]
    assert (adapted - before).abs().max() > 1e-3
    assert torch.equal(clean_run(model, ctx.family.eval_batch)[0], before)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_every_kind_and_stays_near_float32(dtype):
    """Patched values (float32 means, noise) are cast to the model's dtype; logits stay near float32's."""
    low, full = models.load("tiny-llama", dtype=dtype), models.load("tiny-llama")
    assert low.dtype == getattr(torch, dtype)
    a, b = context(full, "copying", n_train=6, n_eval=4), context(low, "copying", n_train=6, n_eval=4)
    torch.testing.assert_close(b.family.clean_logits, a.family.clean_logits, atol=0.05, rtol=0)
    for method in ABLATIONS.names():
        for site in sites(1):
            got = ablated_logits(b.family, SEED, site, method)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, ablated_logits(a.family, SEED, site, method), atol=0.05, rtol=0)
    for kind, points in POINTS.items():
        for point in points:
            want, got = run_kind(kind, a, point).metrics, run_kind(kind, b, point).metrics
            assert got["accuracy_clean"] == want["accuracy_clean"], (kind, point)


def test_the_default_lora_targets_pass_spec_validation(model):
    info = models.describe(model.name)
    defaults = target_names("default", model.arch)
    assert defaults and set(defaults) <= set(layer_linears(model.name))  # GPT-2's Conv1D projections count
    check_targets({"targets": ["default"]}, info)  # raises on a default the layer does not have
    with pytest.raises(AtlasError, match="axes.targets.1: unknown target module 'no_such_proj'"):
        check_targets({"targets": ["default", f"{defaults[0]}+no_such_proj"]}, info)  # the check can fail
