"""The steering and ablation oracle checks, as they run on the embedded SmolLM2, on the real model packs of other
families and sizes. A pack that is not installed skips, saying how to install it (CI installs gemma3-270m)."""
from __future__ import annotations

import pytest

from interventions import models, packs
from interventions.ablation import ablated_logits
from interventions.hooks import count_hooks
from interventions.kinds import run_kind
from interventions.steering import steering_vector
from tests import oracle
from tests.conftest import context
from tests.oracle import SEED, VALUES, expected, sites

pytestmark = pytest.mark.slow  # real models of 270M-500M parameters

PACKS = ["gemma3-270m", "qwen2.5-coder-0.5b"]


@pytest.fixture(scope="module", params=PACKS)
def real(request):
    name = request.param
    if not packs.installed(name) and not packs.converted(name):
        pytest.skip(f"{name} is not installed: {packs.PACKS.get(name).install_command()}")
    yield models.load(name)
    VALUES.clear()  # the oracle's cache is keyed by id(model)


def test_the_pack_is_the_model_its_declaration_says(real):
    pack = packs.PACKS.get(real.name)
    assert real.config.model_type == pack.family and real.n_layers == pack.layers
    assert real.config.hidden_size == pack.d_model
    assert sum(p.numel() for p in real.module.parameters()) == pack.params


def test_steering_equals_a_hand_written_hook(real):
    ctx = context(real, family="capitalization", n_train=8, n_eval=4)
    layer, strength = real.n_layers // 2, 0.5
    out = run_kind("steering", ctx, {"layer": layer, "strength": strength, "vector_type": "mean_diff"}).metrics
    vector = strength * ctx.family.resid_norm(layer) * steering_vector(ctx, layer, "mean_diff")
    deltas = [
        oracle.logit_diff(real, oracle.last_logits(real, i.prompt, (layer, vector)), i.target, i.distractor)
        - oracle.logit_diff(real, oracle.last_logits(real, i.prompt), i.target, i.distractor)
        for i in ctx.family.split.eval
    ]
    assert out["ld_delta"] == pytest.approx(sum(deltas) / len(deltas), abs=1e-3)
    assert abs(out["ld_delta"]) > 1e-2  # the check above compares something that moved


# One method per kind of replacement (a constant, train statistics, aligned train values, the corrupt run): every
# method is checked against the oracle on every architecture's tiny model; here the real weights, ~25 s a method.
REAL_METHODS = ["zero", "mean", "resample", "clean_to_corrupt"]


@pytest.mark.parametrize("method", REAL_METHODS)
def test_ablation_methods_on_every_component_match_hand_hooks(real, method):
    ctx = context(real, "factual_recall", seed=0, n_train=4, n_eval=3)
    for site in sites(real.n_layers // 2):
        got = ablated_logits(ctx.family, SEED, site, method)
        want = expected(real, ctx.family, site, method)
        diff = (got.log_softmax(-1) - want.log_softmax(-1)).abs().max()
        assert diff <= 3e-4, f"{site} {method}: {diff}"  # per-prompt float32 noise: 1.2e-4 seen on Gemma 3
    assert count_hooks(real.module) == 0
