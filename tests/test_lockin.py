"""Lock-in steps on constructed rank sequences whose answer is known, against a brute-force oracle."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from interventions.lockin import lock_in_steps, ranks


def profile_from_ranks(rank_of: dict[int, int]) -> dict[int, float]:
    """An effect profile whose ranks are `rank_of` (rank 1 the largest)."""
    return {layer: float(100 - r) for layer, r in rank_of.items()}


def oracle(rank_seq: dict[int, list[int]], steps: list[int]) -> dict[int, int]:
    """The definition read literally: the smallest step s such that every checkpoint t >= s is within ±1."""
    out = {}
    for layer, seq in rank_seq.items():
        out[layer] = min(s for i, s in enumerate(steps) if all(abs(r - seq[-1]) <= 1 for r in seq[i:]))
    return out


def test_ranks_order_by_effect_ties_to_the_lower_layer():
    assert ranks({0: 0.1, 1: 5.0, 2: 0.1, 3: 2.0}) == {1: 1, 3: 2, 0: 3, 2: 4}
    assert ranks({0: float("nan"), 1: 0.0}) == {1: 1, 0: 2}


def test_a_layer_fixed_from_the_start_locks_in_at_the_first_checkpoint_and_a_late_riser_late():
    # 5 layers, checkpoints 10..50; L2 is first throughout, the others swap with a neighbour
    seqs = {2: [1, 1, 1, 1, 1], 0: [2, 2, 3, 3, 3], 1: [3, 3, 2, 2, 2], 3: [4, 5, 5, 5, 4], 4: [5, 4, 4, 4, 5]}
    steps = [10, 20, 30, 40, 50]
    profiles = {s: profile_from_ranks({layer: seq[i] for layer, seq in seqs.items()}) for i, s in enumerate(steps)}
    got = lock_in_steps(profiles)
    assert got == {2: 10, 0: 10, 1: 10, 3: 10, 4: 10}  # every swap is by one rank
    # each checkpoint a permutation of ranks 1..5
    seqs = {0: [5, 4, 3, 2, 1], 1: [1, 2, 4, 4, 5], 2: [3, 3, 1, 3, 3], 3: [2, 1, 2, 1, 2], 4: [4, 5, 5, 5, 4]}
    profiles = {s: profile_from_ranks({layer: seq[i] for layer, seq in seqs.items()}) for i, s in enumerate(steps)}
    got = lock_in_steps(profiles)
    assert got[0] == 40  # a steady climb to first: within one rank of it only from rank 2 on
    assert got[1] == 30  # sinking to last: 4, 4, 5 from step 30
    assert got[2] == 40  # a jump to first at step 30 is two ranks off its final 3
    assert got[3] == 10 and got[4] == 10  # swaps of one rank only
    assert got == oracle(seqs, steps)


def test_the_tolerance_window_is_plus_minus_one():
    steps = [1, 2, 3]
    two_off = {0: [3, 1, 1], 1: [1, 2, 2], 2: [2, 3, 3]}
    profiles = {s: profile_from_ranks({layer: seq[i] for layer, seq in two_off.items()}) for i, s in enumerate(steps)}
    assert lock_in_steps(profiles) == {0: 2, 1: 1, 2: 1}
    assert lock_in_steps(profiles, tolerance=2) == {0: 1, 1: 1, 2: 1}
    assert lock_in_steps(profiles, tolerance=0) == {0: 2, 1: 2, 2: 2}


def test_lock_in_matches_the_oracle_on_every_random_permutation_sequence():
    rng = np.random.default_rng(0)
    layers, steps = 6, [5, 10, 15, 20, 25, 30]
    perms = list(itertools.permutations(range(1, layers + 1)))
    for _ in range(200):
        chosen = [perms[i] for i in rng.integers(len(perms), size=len(steps))]
        seqs = {layer: [p[layer] for p in chosen] for layer in range(layers)}
        profiles = {s: profile_from_ranks({layer: p[layer] for layer in range(layers)}) for s, p in zip(steps, chosen)}
        assert lock_in_steps(profiles) == oracle(seqs, steps)


def test_bad_profiles():
    assert lock_in_steps({}) == {}
    with pytest.raises(ValueError, match="same layers"):
        lock_in_steps({1: {0: 1.0, 1: 2.0}, 2: {0: 1.0}})


# --- the adapter kind's lock_in operation on a tiny model -----------------------------------------------------------

LOCK_SPEC = """\
name: lock
model: tiny-llama
kind: adapter
n_train: 4
n_eval: 2
axes:
  seed: [0]
  family: [antonyms]
  operation: [lock_in]
  steps: [6]
"""


@pytest.fixture
def adapter_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_ADAPTER_CACHE", str(tmp_path / "adapters"))


@pytest.mark.slow  # five tiny-model trainings and their surgery profiles: about 10-30 s on shared cores
def test_lock_in_profiles_are_the_surgery_profile_of_each_checkpoint(tiny_llama, adapter_cache):
    from adapters.kind import adapter_trial
    from adapters.runs import layer_effects
    from adapters.sources import adapter_for, target_names
    from adapters.training import LoraSettings, train
    from tests.conftest import context

    ctx = context(tiny_llama)
    ctx.options = {"checkpoints": {"every": 2}}
    source = dict(adapter="train", rank=4, alpha=8.0, steps=6, lr=0.05, targets="default")
    out = adapter_trial(ctx, operation="lock_in", **source)
    curves = {k: v for k, v in out.steps.items() if k.startswith("lock_effect_step")}
    assert sorted(curves) == ["lock_effect_step2", "lock_effect_step4", "lock_effect_step6"]
    assert out.metrics["checkpoints"] == 3
    # the last checkpoint is the trained (cached) adapter: its profile is norm_effect's surgery profile
    final, _ = adapter_for(ctx, **source)
    assert curves["lock_effect_step6"] == pytest.approx(layer_effects(ctx, final), abs=1e-7)
    # an earlier checkpoint is the adapter trained for that many steps (same init, same optimiser path)
    settings = LoraSettings(4, 8.0, 2, 0.05, target_names("default", tiny_llama.arch))
    short = train(tiny_llama, ctx.family.split, settings, "two-steps")
    assert curves["lock_effect_step2"] == pytest.approx(layer_effects(ctx, short), abs=1e-6)
    profiles = {int(k.removeprefix("lock_effect_step")): dict(enumerate(v)) for k, v in curves.items()}
    assert out.steps["lock_in_layer"] == [float(s) for _, s in sorted(lock_in_steps(profiles).items())]
    top = sorted(range(tiny_llama.n_layers), key=lambda layer: (-curves["lock_effect_step6"][layer], layer))[:3]
    assert out.metrics["lock_in_top3"] == max(out.steps["lock_in_layer"][layer] for layer in top)
    assert out.tags["lock_in_top3_layers"] == ",".join(f"L{layer}" for layer in top)


@pytest.mark.parametrize("extra,field", [
    ("", "axes.operation"),  # lock_in without checkpoints
    ("checkpoints: {every: 7}\n", "checkpoints.every"),  # past the 6 steps
    ("checkpoints: {every: 0}\n", "checkpoints.every"),
])
def test_checkpoints_are_validated_before_anything_starts(tmp_path, extra, field):
    from interventions.registry import AtlasError
    from orchestrator.spec import load_sweep

    (tmp_path / "spec.yaml").write_text(LOCK_SPEC + extra)
    with pytest.raises(AtlasError) as caught:
        load_sweep(tmp_path / "spec.yaml")
    assert field in str(caught.value), str(caught.value)


def test_a_valid_checkpoints_spec_loads(tmp_path):
    from orchestrator.grid import expand
    from orchestrator.spec import load_sweep

    (tmp_path / "spec.yaml").write_text(LOCK_SPEC + "checkpoints: {every: 2}\n")
    sweep = load_sweep(tmp_path / "spec.yaml")
    assert sweep.options["checkpoints"] == {"every": 2} and len(expand(sweep)) == 1


@pytest.mark.slow  # an MLflow store written and read back: about 10-30 s
def test_the_adapter_report_draws_checkpoint_profiles_and_states_lock_in_steps(tmp_path, monkeypatch):
    """Constructed lock_in runs (3 seeds) logged with the sweep's writer: the figure and the notes' lock-in steps."""
    from orchestrator.report.record import read
    from orchestrator.report.sections import build
    from orchestrator.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    spec = (LOCK_SPEC + "checkpoints: {every: 2}\n").replace("seed: [0]", "seed: [0, 1, 2]")
    (tmp_path / "spec.yaml").write_text(spec)
    from orchestrator.grid import expand
    from orchestrator.spec import load_sweep

    sweep = load_sweep(tmp_path / "spec.yaml")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", sweep)
    points = expand(sweep)
    parent = tracker.start_parent(len(points), len(points))
    # tiny-llama has 4 layers: L1 is on top from step 2; L3 overtakes L0 late
    by_step = {2: [3.0, 9.0, 1.0, 0.5], 4: [3.0, 9.0, 2.0, 4.0], 6: [3.0, 9.0, 2.0, 5.0]}
    locked = lock_in_steps({s: dict(enumerate(p)) for s, p in by_step.items()})
    assert locked == {0: 2, 1: 2, 2: 2, 3: 4}
    for point in points:
        steps = {f"lock_effect_step{s}": p for s, p in by_step.items()}
        steps["lock_in_layer"] = [float(locked[layer]) for layer in range(4)]
        tracker.log_trial(parent, point, {"lock_in_top3": 2.0 + point.values["seed"], "kl": 0.0}, {}, steps)
    tracker.end_parent(parent, "FINISHED")
    built = build(read(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lock"))
    assert "adapter_lock_in" in [f.id for f in built.figures]
    lines = [n for n in built.notes if n.startswith("lock-in (antonyms)")]
    assert len(lines) == 1
    assert "by step 3 ± 1 over 3 seed(s)" in lines[0], lines[0]
    assert "L0 2 ± 0, L1 2 ± 0, L2 2 ± 0, L3 4 ± 0" in lines[0], lines[0]
    figure = next(f for f in built.figures if f.id == "adapter_lock_in").figure
    assert len(figure.axes[0].get_lines()) == 3  # one line per checkpoint
