"""Layer skipping and early exit against plain forwards with hand-written hooks."""
from __future__ import annotations

import pytest
import torch

from interventions.skipping import early_exit_trial, exit_logits, skip_trial, skipped_logits
from tests.conftest import context


@torch.no_grad()
def oracle_skip(model, prompt: str, skip: set[int]) -> torch.Tensor:
    """Full HF forward where each skipped block returns its own input."""
    hooks, inputs = [], {}
    for index in skip:
        block = model.module.model.layers[index]
        hooks.append(block.register_forward_pre_hook(
            lambda m, a, k, i=index: inputs.__setitem__(i, a[0] if a else k["hidden_states"]), with_kwargs=True))
        hooks.append(block.register_forward_hook(
            lambda m, _in, out, i=index: (inputs[i], *out[1:]) if isinstance(out, tuple) else inputs[i]))
    try:
        ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
        return model.module(input_ids=ids).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def oracle_exit(model, prompt: str, layer: int) -> torch.Tensor:
    ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    seen = {}  # resid_post[layer] from a hook: output_hidden_states would leave transformers' own hooks behind
    handle = model.module.model.layers[layer].register_forward_hook(
        lambda m, i, out: seen.setdefault("out", out[0] if isinstance(out, tuple) else out))
    try:
        model.module(input_ids=ids)
    finally:
        handle.remove()
    hidden = seen["out"]
    return model.module.lm_head(model.module.model.norm(hidden))[0, -1]


@pytest.mark.parametrize("skip", [{0}, {1, 2}, {3}, {0, 3}])
def test_skipping_matches_identity_hooks(tiny_model, skip):
    run = context(tiny_model, "factual_recall").family
    want = torch.stack([oracle_skip(tiny_model, i.prompt, skip) for i in run.split.eval])
    torch.testing.assert_close(skipped_logits(run, frozenset(skip)), want, atol=1e-4, rtol=0)


def test_skipping_nothing_and_exiting_at_the_last_layer_are_the_full_model(smollm2):
    ctx = context(smollm2, "arithmetic", n_eval=6)
    last = smollm2.n_layers - 1
    for out in (skip_trial(ctx, skip=[]), early_exit_trial(ctx, exit_layer=last)):
        assert out["kl"] < 1e-6 and out["top1_agreement"] == 1 and out["top5_overlap"] == 1
    torch.testing.assert_close(exit_logits(ctx.family, last), ctx.family.clean_logits, atol=1e-4, rtol=0)
    skipped = skip_trial(ctx, skip=[last - 1, last])
    assert skipped["kl"] > 1e-3  # the comparison can fail


def test_early_exit_is_the_logit_lens(tiny_model):
    run = context(tiny_model, "copying").family
    for layer in range(tiny_model.n_layers - 1):  # hidden_states[L+1] is resid_post[L] except for the last layer
        want = torch.stack([oracle_exit(tiny_model, i.prompt, layer) for i in run.split.eval])
        torch.testing.assert_close(exit_logits(run, layer), want, atol=1e-4, rtol=0)


def test_early_exit_agreement_rises_with_depth_on_the_embedded_model(smollm2):
    ctx = context(smollm2, "antonyms", n_eval=8)
    kls = [early_exit_trial(ctx, exit_layer=layer)["kl"] for layer in (15, 25, 28)]  # the lens sharpens late
    assert kls[0] > kls[1] > kls[2] >= 0
