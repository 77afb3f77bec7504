"""Integrated-gradients estimates (interventions/ig.py) against independent computations: the exact trial on a
linear toy (any k), the exact trial of one site on a float64 tiny model (error falling with k, then within
tolerance), the joint path's own end point (completeness: the estimates of every head sum to the LD shift of
moving every head at once, computed here with hooks written in the test), and the `screen.steps` spec check."""
from __future__ import annotations

import pytest
import torch

from interventions.ablation import ABLATIONS
from interventions.attribution import ESTIMATES, attribution
from interventions.context import TrialContext
from interventions.forward import position_ids
from interventions.hooks import count_hooks
from interventions.ig import integrated_gradients
from interventions.kinds import run_pack
from interventions.metrics import logit_diff
from orchestrator.driver import worker_settings
from orchestrator.spec import SpecError, load_sweep
from tests.conftest import spec
from tests.test_attribution import SEED, double, linear_toy, run_of


def exact_drop(ctx, point) -> float:
    return run_pack("ablation", ctx, [point])[0].metrics["ld_drop"]


@pytest.fixture(scope="module")
def tiny64(tiny_llama):
    return double(tiny_llama)


@pytest.mark.parametrize("method", ["zero", "mean", "clean_to_corrupt"])
def test_on_a_linear_toy_ig_equals_the_exact_trial_for_any_k(tiny_llama, method):
    """LD linear in the last layer's components: the gradient is the same along the path, so every k, and the joint
    path of all the last layer's heads, give each point's exact ld_drop; at layer 0 (nonlinear after) k=1 does not."""
    toy = linear_toy(tiny_llama)
    ctx = TrialContext(toy, SEED, run_of(toy, "antonyms"))
    last, heads = toy.n_layers - 1, toy.config.num_attention_heads
    points = [{"component": c, "layer": last, "method": method} for c in ("layer", "attn", "resid")] + \
             [{"component": "head", "layer": last, "method": method, "head": h} for h in range(heads)]
    exact = [exact_drop(ctx, p) for p in points]
    for k in (1, 3):
        for p, e, want in zip(points, integrated_gradients(ctx, points, steps=k), exact):
            assert e["ld_drop_estimate"] == pytest.approx(want, rel=1e-5, abs=1e-6), (k, p, e, want)
    early = {"component": "attn", "layer": 0, "method": method}
    got = integrated_gradients(ctx, [early], steps=1)[0]["ld_drop_estimate"]
    assert abs(got - exact_drop(ctx, early)) > 1e-4 * abs(exact_drop(ctx, early))
    assert count_hooks(toy.module) == 0


@pytest.mark.parametrize("method", ["zero", "clean_to_corrupt"])
def test_single_site_ig_converges_to_the_exact_trial(tiny64, method):
    """One site per call (a one-site path): |IG - exact| falls from k=1 to 8 to 32 (midpoint rule, O(1/k^2)), is
    within 1e-3 relative at k=32 (until float noise), and is smaller than first-order attribution's error."""
    ctx = TrialContext(tiny64, SEED, run_of(tiny64))
    sites = [{"component": "attn", "layer": 0}, {"component": "mlp", "layer": 1},
             {"component": "head", "layer": 0, "head": 2}, {"component": "layer", "layer": 0}]
    for site in sites:
        point = {**site, "method": method}
        want = exact_drop(ctx, point)
        errors = [abs(integrated_gradients(ctx, [point], steps=k)[0]["ld_drop_estimate"] - want) for k in (1, 8, 32)]
        first = abs(attribution(ctx, [point])[0]["ld_drop_estimate"] - want)
        noise = 1e-8  # the exact trial's own rounding (its logits pass through float32)
        assert all(b < a or b < noise for a, b in zip(errors, errors[1:])) and errors[1] < errors[0], \
            (point, want, errors)
        assert errors[2] <= 1e-3 * abs(want) + 1e-7, (point, want, errors)
        assert errors[2] < first, (point, want, errors, first)


def test_joint_ig_is_complete_on_its_own_path(tiny64):
    """Every head of every layer in one group (method zero): the estimates' sum converges with k to the LD shift of
    the joint path's end point, every head shifted at once by minus its clean value at real positions (hooks here)."""
    ctx = TrialContext(tiny64, SEED, run_of(tiny64))
    run, module = ctx.family, tiny64.module
    n_heads = tiny64.config.num_attention_heads
    points = [{"component": "head", "layer": L, "head": h, "method": "zero"}
              for L in range(tiny64.n_layers) for h in range(n_heads)]
    batch, mask = run.eval_batch, run.eval_batch.mask.bool()
    seen = {}

    def keep(layer):
        def hook(_m, args):
            seen[layer] = args[0].clone()
        return hook

    def shifted(layer):
        def hook(_m, args):
            return (args[0] - torch.where(mask[..., None], seen[layer], 0),)
        return hook

    def forward(hook):
        handles = [b.self_attn.o_proj.register_forward_pre_hook(hook(i)) for i, b in enumerate(module.model.layers)]
        try:
            with torch.no_grad():
                logits = module(input_ids=batch.ids, attention_mask=batch.mask,
                                position_ids=position_ids(batch.mask), use_cache=False).logits[:, -1]
        finally:
            for h in handles:
                h.remove()
        return float(logit_diff(logits, run.target, run.distractor).double().mean())

    base = forward(keep)  # the clean run, keeping each layer's head values
    want = forward(shifted) - base
    errors = [abs(sum(e["ld_shift_estimate"] for e in integrated_gradients(ctx, points, steps=k)) - want)
              for k in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 2e-3 * abs(want), (want, errors)


def test_ig_registered_with_its_params():
    assert ESTIMATES.get("ig").params == ("steps",) and ESTIMATES.get("ig_layer").params == ("steps",)
    assert ESTIMATES.get("attribution").params == ()
    assert set(ABLATIONS.names()) >= {"zero", "clean_to_corrupt"}


def screened_spec(tmp_path, screen: dict):
    text = spec("ablation", "ig", component=["head"], head=[0], method=["zero"], layer=[0],
                extra={"screen": screen})
    (tmp_path / "ig.yaml").write_text(text)
    return tmp_path / "ig.yaml"


@pytest.mark.parametrize("screen, field", [({"estimate": "attribution", "steps": 4}, "screen.steps: only with"),
                                           ({"steps": 4}, "screen.steps: only with"),
                                           ({"estimate": "ig", "steps": 0}, "screen.steps"),
                                           ({"estimate": "ig", "steps": "many"}, "screen.steps")])
def test_steps_is_a_positive_int_and_only_with_ig(tmp_path, screen, field):
    with pytest.raises(SpecError) as err:
        load_sweep(screened_spec(tmp_path, screen))
    message = str(err.value)
    assert field in message and "\n" not in message, message


def test_the_workers_get_the_steps(tmp_path):
    sweep = load_sweep(screened_spec(tmp_path, {"estimate": "ig", "steps": 4}))
    assert worker_settings(sweep, "ig").estimate_params == (("steps", 4),)
    assert worker_settings(load_sweep(screened_spec(tmp_path, {"estimate": "ig"})), "ig").estimate_params == ()
    assert worker_settings(sweep).estimate_params == ()  # the verify trials read none
