"""The steering and ablation oracle checks, as they run on the embedded SmolLM2, on the real model packs of other
families and sizes. A pack that is not installed skips, saying how to install it (CI installs gemma3-270m)."""
from __future__ import annotations

import pytest

from interventions import models, packs
from tests import oracle
from tests.conftest import context
from tests.oracle import VALUES

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
    out = oracle.assert_steering_equals_hook(ctx, real.n_layers // 2, 0.5, "mean_diff", abs_tol=1e-3)
    assert abs(out["ld_delta"]) > 1e-2  # the check above compares something that moved


# One method per kind of replacement (a constant, train statistics, aligned train values, the corrupt run): every
# method is checked against the oracle on every architecture's tiny model; here the real weights, ~25 s a method.
REAL_METHODS = ["zero", "mean", "resample", "clean_to_corrupt"]


@pytest.mark.parametrize("method", REAL_METHODS)
def test_ablation_methods_on_every_component_match_hand_hooks(real, method):
    ctx = context(real, "factual_recall", seed=0, n_train=4, n_eval=3)
    # per-prompt float32 noise: 1.2e-4 seen on Gemma 3
    oracle.assert_ablation_equals_oracle(ctx, [real.n_layers // 2], method, logprob_atol=3e-4)
