"""No repeated work: packed grid points equal unpacked ones, and runs without prefix reuse equal runs with it."""
from __future__ import annotations

import itertools

import pytest

from interventions.ablation import ABLATIONS
from interventions.architectures import part
from interventions.components import COMPONENTS
from interventions.hooks import count_hooks
from interventions.kinds import KINDS, run_kind, run_pack
from tests.conftest import context


def assert_same(packed, alone, tol=1e-4):
    assert len(packed) == len(alone)
    for p, a in zip(packed, alone):
        assert p.metrics.keys() == a.metrics.keys()
        for k in p.metrics:
            assert p.metrics[k] == pytest.approx(a.metrics[k], abs=tol, rel=tol, nan_ok=True), k  # ratios: relative


def steering_points(layer: int) -> list[dict]:
    return [{"layer": layer, "strength": s, "vector_type": v}
            for s, v in itertools.product((-2.0, -0.5, 0.0, 1.5), ("mean_diff", "pca", "probe", "random"))]


def test_steering_pack_equals_one_point_at_a_time(tiny_model):
    ctx = context(tiny_model, "antonyms", others=("capitalization",), n_eval=5)
    for layer in (0, 2):
        points = steering_points(layer)
        packed = run_pack("steering", ctx, points)
        assert_same(packed, [run_kind("steering", ctx, p) for p in points])
        assert "selectivity" in packed[0].metrics and "selectivity" not in packed[-1].metrics  # knock-outs only
    assert count_hooks(tiny_model.module) == 0


def ablation_points(n_heads: int, layer: int) -> list[list[dict]]:
    """One pack per component: every method (and for `head`, every head) at one layer."""
    packs = []
    for component in COMPONENTS:
        heads = range(n_heads) if component == "head" else [None]
        pack = [{"component": component, "layer": layer, "method": m, **({} if h is None else {"head": h})}
                for h in heads for m in ABLATIONS.names()]
        packs.append(pack)
    return packs


def test_ablation_pack_equals_one_point_at_a_time(tiny_model):
    ctx = context(tiny_model, "copying", n_train=6, n_eval=5)  # prompts of several lengths: padding in the pack
    for layer in (0, 2):
        for pack in ablation_points(tiny_model.config.num_attention_heads, layer):
            assert_same(run_pack("ablation", ctx, pack), [run_kind("ablation", ctx, p) for p in pack])
    assert count_hooks(tiny_model.module) == 0


def test_a_pack_may_vary_only_its_pack_axes(tiny_llama):
    ctx = context(tiny_llama)
    with pytest.raises(AssertionError, match="may vary only"):
        run_pack("steering", ctx, [{"layer": 0, "strength": 1.0, "vector_type": "pca"},
                                   {"layer": 1, "strength": 1.0, "vector_type": "pca"}])
    assert KINDS.get("steering").pack_axes and not KINDS.get("skip").pack_axes


def results(model, kind: str, points: list[dict]):
    ctx = context(model, "copying", n_train=6, n_eval=5)  # fresh baselines: nothing cached from the other mode
    return [run_kind(kind, ctx, p) for p in points]


KIND_POINTS = {
    "steering": [{"layer": 2, "strength": 1.0, "vector_type": "mean_diff"}],
    "ablation": [{"component": c, "layer": 2, "method": m, **({"head": 1} if c == "head" else {})}
                 for c in COMPONENTS for m in ("mean", "clean_to_corrupt")],
    "skip": [{"skip": [1, 2]}, {"skip": [3]}],
}


@pytest.mark.parametrize("kind", KIND_POINTS)
def test_without_prefix_reuse_the_prefix_runs_again_and_results_are_equal(tiny_llama, kind):
    with_reuse = results(tiny_llama, kind, KIND_POINTS[kind])
    ctx = context(tiny_llama, "copying", n_train=6, n_eval=5)
    for point in KIND_POINTS[kind]:
        run_kind(kind, ctx, point)  # baselines computed with reuse on: below, layer 0 runs only for the trials
    ctx.prefix_reuse = False
    calls = []
    handle = part(tiny_llama.module, tiny_llama.arch.layers)[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        without = [run_kind(kind, ctx, p) for p in KIND_POINTS[kind]]
    finally:
        handle.remove()
    assert_same(without, with_reuse, tol=1e-5)
    assert len(calls) >= len(KIND_POINTS[kind])  # every trial ran layer 0 again
    assert count_hooks(tiny_llama.module) == 0
