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
