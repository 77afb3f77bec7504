"""Steering against independent computations: hand-written hooks, hand-built tensors, padding, no-ops."""
from __future__ import annotations

import pytest
import torch

from interventions.context import FamilyRun, TrainActs, TrialContext, seeded_generator
from interventions.families import Split
from interventions.forward import clean_run, encode, run_from
from interventions.hooks import capture, count_hooks
from interventions.kinds import run_kind
from interventions.steering import VECTORS, steer, steering_vector
from tests import oracle
from tests.conftest import context, split


def steering_trial(ctx, **point) -> dict[str, float]:
    """One grid point through the kind registry, as a worker runs it."""
    return run_kind("steering", ctx, point).metrics


def test_run_from_matches_the_plain_forward(tiny_model):
    batch = encode(tiny_model.tokenizer, ["The capital of France is", "Hi", "one two three four five"])
    logits, resid = clean_run(tiny_model, batch)
    plain = tiny_model.module(input_ids=batch.ids, attention_mask=batch.mask).logits[:, -1]
    assert torch.allclose(logits, plain, atol=1e-5)
    for layer in range(tiny_model.n_layers):
        assert torch.allclose(run_from(tiny_model, resid[layer], batch, layer + 1), logits, atol=1e-5)


@pytest.mark.parametrize("vector_type", VECTORS.names())
def test_zero_strength_is_a_no_op(tiny_model, vector_type):
    out = steering_trial(context(tiny_model), layer=1, strength=0.0, vector_type=vector_type)
    assert abs(out["ld_delta"]) < 1e-5
    assert out["kl"] < 1e-6  # float32 noise between the plain forward and the run from the cached layer
    assert out["target_prob_steered"] == pytest.approx(out["target_prob_clean"], abs=1e-6)


def test_steering_changes_the_output(tiny_model):
    out = steering_trial(context(tiny_model), layer=1, strength=4.0, vector_type="mean_diff")
    assert out["kl"] > 1e-3 and abs(out["ld_delta"]) > 1e-3


@pytest.mark.parametrize("layer,strength,vector_type", [(0, 1.0, "mean_diff"), (2, -0.5, "probe"), (3, 2.0, "random")])
def test_steering_equals_a_hand_written_hook(tiny_model, layer, strength, vector_type):
    oracle.assert_steering_equals_hook(context(tiny_model), layer, strength, vector_type)


def test_steering_equals_a_hand_written_hook_on_the_embedded_model(smollm2):
    ctx = context(smollm2, family="capitalization", n_train=8, n_eval=4)
    out = oracle.assert_steering_equals_hook(ctx, 10, 0.5, "mean_diff", abs_tol=1e-3)
    assert abs(out["ld_delta"]) > 1e-2  # the check above compares something that moved


def _one_at_a_time(model, family, n_eval):
    """The same trial with every eval item in its own batch (no padding), averaged by hand."""
    whole = split(model, family, n_eval=n_eval)
    runs = [FamilyRun(model, Split(whole.family, whole.seed, whole.train, (item,))) for item in whole.eval]
    return whole, runs


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-qwen2", "smollm2-135m"])
def test_left_padding_does_not_change_metrics(model_name, request):
    model = request.getfixturevalue({"tiny-llama": "tiny_llama", "tiny-qwen2": "tiny_qwen2",
                                     "smollm2-135m": "smollm2"}[model_name])
    whole, runs = _one_at_a_time(model, "factual_recall", n_eval=5)
    batched = FamilyRun(model, whole)
    assert (batched.eval_batch.mask == 0).any(), "the batch must actually be padded"
    kwargs = dict(layer=1, strength=0.75, vector_type="mean_diff")
    together = steering_trial(TrialContext(model, 0, batched), **kwargs)
    alone = [steering_trial(TrialContext(model, 0, run), **kwargs) for run in runs]
    for metric in ("ld_delta", "kl", "target_prob_clean", "target_prob_steered", "accuracy_clean"):
        assert together[metric] == pytest.approx(sum(a[metric] for a in alone) / len(alone), abs=1e-4), metric


def test_no_hooks_remain_after_trials(tiny_llama):
    ctx = context(tiny_llama, others=["capitalization"])
    for strength in (-1.0, 1.0):
        steering_trial(ctx, layer=2, strength=strength, vector_type="pca")
        assert count_hooks(tiny_llama.module) == 0
    with pytest.raises(RuntimeError):
        with capture(dict(enumerate(tiny_llama.module.model.layers))):
            assert count_hooks(tiny_llama.module) == tiny_llama.n_layers
            raise RuntimeError("a trial that fails half-way")
    assert count_hooks(tiny_llama.module) == 0


def test_steer_adds_the_scaled_vector_at_real_positions_only():
    resid = torch.randn(2, 3, 4)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    v = torch.tensor([1.0, 0.0, 0.0, 0.0])
    out = steer(resid, v, strength=-0.5, resid_norm=4.0, mask=mask)
    expected = resid.clone()
    expected[0, 1:, 0] -= 2.0
    expected[1, :, 0] -= 2.0
    assert torch.equal(out, expected)


def _planted(d=32, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    base = torch.randn(n, d, generator=g) * 3
    noise = lambda: torch.randn(n, d, generator=g) * 0.3  # noqa: E731
    acts = TrainActs(with_target=base + 1.5 * direction + noise(), with_distractor=base - 1.5 * direction + noise(),
                     prompt=base)
    return acts, direction


@pytest.mark.parametrize("vector_type", ["mean_diff", "probe"])
def test_contrastive_vectors_recover_a_planted_direction(vector_type):
    acts, direction = _planted()
    v = VECTORS.get(vector_type)(acts, seeded_generator(0))
    assert v.norm() == pytest.approx(1.0, abs=1e-5)
    assert float(v @ direction) > 0.9


def test_pca_finds_the_direction_that_varies_and_points_with_mean_diff():
    g = torch.Generator().manual_seed(1)
    d, n = 32, 60
    axis = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    base = torch.randn(n, d, generator=g)
    scale = torch.rand(n, 1, generator=g) * 4 + 0.5  # paired differences vary along `axis`, all positive
    acts = TrainActs(base + scale * axis + 0.05 * torch.randn(n, d, generator=g), base, base)
    v = VECTORS.get("pca")(acts, seeded_generator(0))
    assert float(v @ axis) > 0.9


def test_random_vectors_are_seeded_unit_gaussians():
    acts, direction = _planted()
    a = VECTORS.get("random")(acts, seeded_generator(0, 3))
    b = VECTORS.get("random")(acts, seeded_generator(0, 3))
    c = VECTORS.get("random")(acts, seeded_generator(1, 3))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.norm() == pytest.approx(1.0, abs=1e-5)


def test_mean_diff_matches_a_hand_computation(tiny_llama):
    ctx = context(tiny_llama)
    acts = ctx.family.train_acts(2)
    expected = (acts.with_target - acts.with_distractor).mean(0)
    v = steering_vector(ctx, 2, "mean_diff")
    assert torch.allclose(v, expected / expected.norm(), atol=1e-5)
    # the train activations are resid_post[2] at the last position of prompt + target, computed independently
    item = ctx.family.split.train[0]
    with capture({2: tiny_llama.module.model.layers[2]}) as seen:
        ids = tiny_llama.tokenizer(item.prompt)["input_ids"] + [oracle.token(tiny_llama, item.target)]
        tiny_llama.module(input_ids=torch.tensor([ids]))
    assert torch.allclose(acts.with_target[0], seen[2][0, -1], atol=1e-5)


def test_negative_strength_reports_selectivity_against_the_other_families(tiny_llama):
    ctx = context(tiny_llama, others=["capitalization", "factual_recall"])
    out = steering_trial(ctx, layer=1, strength=-2.0, vector_type="mean_diff")
    assert out["selectivity"] == pytest.approx(out["target_logprob_drop"] / out["collateral_logprob_drop"])
    # the collateral is the same intervention on the other families' own eval items, by hand
    vector = -2.0 * ctx.family.resid_norm(1) * steering_vector(ctx, 1, "mean_diff")
    drops = []
    for other in ctx.others:
        for item in other.split.eval:
            clean = oracle.last_logits(tiny_llama, item.prompt).log_softmax(-1)
            steered = oracle.last_logits(tiny_llama, item.prompt, (1, vector)).log_softmax(-1)
            tid = oracle.token(tiny_llama, item.target)
            drops.append(float(clean[tid] - steered[tid]))
    assert out["collateral_logprob_drop"] == pytest.approx(sum(drops) / len(drops), abs=1e-4)
    positive = steering_trial(ctx, layer=1, strength=2.0, vector_type="mean_diff")
    assert "selectivity" not in positive
