"""Ablation and patching against an independent computation: one prompt at a time, hand-written hooks."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from interventions.ablation import ABLATIONS, ablated_logits
from interventions.components import COMPONENTS, Site, batch_of, corrupt_run
from interventions.forward import run_from
from interventions.kinds import run_kind
from interventions.metrics import kl
from tests import oracle
from tests.conftest import context
from tests.oracle import SEED, sites


def ablation_trial(ctx, **point) -> dict[str, float]:
    """One grid point through the kind registry, as a worker runs it."""
    return run_kind("ablation", ctx, point).metrics


def test_every_ablation_method_has_an_oracle():
    """A method is one @method entry in interventions/ablation.py; the tests below compare each with its hand-built
    replacement (tests/oracle.py ORACLES), which must act on the run the method declares."""
    missing = [m for m in ABLATIONS.names() if m not in oracle.ORACLES]
    assert not missing, f"ablation methods without an oracle: {', '.join(missing)} (add each to tests/oracle.py)"
    for name in ABLATIONS.names():
        assert oracle.ORACLES[name][0] == ABLATIONS.get(name).base, f"{name}: the oracle acts on another run"
    with pytest.raises(NotImplementedError, match="'no_such_method' has no oracle"):
        oracle.expected(None, None, Site("mlp", 0), "no_such_method")


@pytest.mark.parametrize("method", ABLATIONS.names())
def test_every_method_on_every_component_matches_hand_hooks_tiny(tiny_model, method):
    ctx = context(tiny_model, "copying", seed=0, n_train=6, n_eval=5)  # prompts of several lengths
    oracle.assert_ablation_equals_oracle(ctx, (0, 2), method)


@pytest.mark.parametrize("method", ABLATIONS.names())
def test_every_method_on_every_component_matches_hand_hooks_embedded(smollm2, method):
    ctx = context(smollm2, "factual_recall", seed=0, n_train=4, n_eval=3)
    oracle.assert_ablation_equals_oracle(ctx, [11], method, logprob_atol=1e-4)


def test_zero_ablating_every_head_equals_zero_ablating_attn(tiny_model):
    ctx = context(tiny_model)
    n_heads = tiny_model.config.num_attention_heads
    every_head = ablated_logits(ctx.family, 0, Site("head", 1, tuple(range(n_heads))), "zero")
    attn = ablated_logits(ctx.family, 0, Site("attn", 1), "zero")
    torch.testing.assert_close(every_head, attn, atol=1e-5, rtol=0)
    one_head = ablated_logits(ctx.family, 0, Site("head", 1, (0,)), "zero")
    assert (one_head - attn).abs().max() > 1e-3  # the comparison can fail


def test_zero_layer_ablation_makes_resid_post_equal_resid_pre(tiny_model):
    ctx = context(tiny_model)
    run = ctx.family
    got = ablated_logits(run, 0, Site("layer", 2), "zero")
    torch.testing.assert_close(got, run_from(tiny_model, run.clean_resid(1), run.eval_batch, 3), atol=1e-6,
                               rtol=0)


def test_patching_the_last_residual_recovers_fully(smollm2):
    ctx = context(smollm2, "antonyms", n_train=4, n_eval=6)
    last = smollm2.n_layers - 1
    out = ablation_trial(ctx, component="resid", layer=last, method="clean_to_corrupt")
    assert out["recovery"] == pytest.approx(1.0, abs=1e-4) and out["kl"] < 1e-6
    noised = ablated_logits(ctx.family, 0, Site("resid", last), "corrupt_to_clean")
    torch.testing.assert_close(noised, corrupt_run(ctx.family)[0], atol=1e-4, rtol=0)
    one_mlp = ablation_trial(ctx, component="mlp", layer=3, method="clean_to_corrupt")
    assert abs(one_mlp["recovery"] - 1) > 1e-3  # one MLP's output alone does not restore the answer


def test_patching_clean_into_clean_is_a_no_op(tiny_model):
    ctx = context(tiny_model)
    run = ctx.family
    for component in COMPONENTS:
        site = Site(component, 1, (0,) if component == "head" else ())
        # corrupt_to_clean with corrupt prompts replaced by the clean ones: the patch copies clean into clean
        run.memo(("corrupt", "batch"), lambda: run.eval_batch)
        got = ablated_logits(run, 0, site, "corrupt_to_clean")
        assert float(kl(run.clean_logits, got).max()) < 1e-6
        assert torch.equal(got.argmax(-1), run.clean_logits.argmax(-1))
        assert batch_of(run, "corrupt") is run.eval_batch


def test_padding_does_not_change_ablation_results(tiny_llama):
    """Lengthening one eval item gives every other item more left padding: their results stay, for every method
    (resample's and random's draws are keyed by an item's index and length, both unchanged)."""
    ctx = context(tiny_llama, "factual_recall", n_train=6, n_eval=6)
    padded = context(tiny_llama, "factual_recall", n_train=6, n_eval=6)
    split = padded.family.split
    longest = int(ctx.family.eval_batch.mask.sum(-1).argmax())
    item = split.eval[longest]
    prefix = "Some facts about the world, in no particular order. "
    longer = replace(item, prompt=prefix + item.prompt, corrupt_prompt=prefix + item.corrupt_prompt)
    padded.family.split = replace(split, eval=(*split.eval[:longest], longer, *split.eval[longest + 1:]))
    assert padded.family.eval_batch.ids.shape[1] > ctx.family.eval_batch.ids.shape[1]
    others = [i for i in range(len(split.eval)) if i != longest]
    for method in ABLATIONS.names():
        for site in sites(1):
            want = ablated_logits(ctx.family, SEED, site, method)[others]
            got = ablated_logits(padded.family, SEED, site, method)[others]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=f"{site} {method}")
