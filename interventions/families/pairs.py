"""Do a family's train pairs share a direction? Target − distractor in one-hot token space, before any model runs.

Each train item is a vector e_target − e_distractor. Unrelated pairs (disjoint tokens) are
orthogonal, and their mean cosine to the mean difference is 1/√n. Pairs that swap target and
distractor (" yes"/" no" and " no"/" yes") cancel: the mean difference shrinks and the mean cosine
falls below that. Then mean_diff has little shared direction to follow, and pca may follow the
answer tokens' own axis. The steering kind measures the same thing in activation space for each trial.
"""
from __future__ import annotations

import math
from collections import Counter

from interventions.families import Split, token_ids

CANCEL_RATIO = 0.5  # warn when |Σ v|² < 0.5 Σ |v|²: more than half of the pairs' squared length cancels


def mean_cosine(split: Split, tokenizer) -> tuple[float, float]:
    """(mean cosine of each train pair's e_target − e_distractor to their mean, the same for unrelated pairs)."""
    total: Counter = Counter()
    for item in split.train:
        target, distractor = (token_ids(tokenizer, t, special=False)[0] for t in (item.target, item.distractor))
        total[target] += 1
        total[distractor] -= 1
    n = len(split.train)
    # every v has |v|² = 2, so mean_i cos(v_i, m) = (Σ v)·m / (n √2 |m|) = |Σ v| / (n √2)
    return math.sqrt(sum(x * x for x in total.values())) / (n * math.sqrt(2)), 1 / math.sqrt(n)


def warnings(splits: dict[tuple[str, int], Split], tokenizer) -> list[str]:
    """One line per family whose train pairs cancel (the seed where they cancel most)."""
    worst: dict[str, tuple[float, float, int]] = {}
    for (family, seed), split in sorted(splits.items()):
        cosine, unrelated = mean_cosine(split, tokenizer)
        if cosine < math.sqrt(CANCEL_RATIO) * unrelated and (family not in worst or cosine < worst[family][0]):
            worst[family] = (cosine, unrelated, seed)
    return [f"warning: family {family} (seed {seed}): its train pairs' differences (target − distractor token) "
            f"cancel: mean cosine to their mean {cosine:.2f}, where unrelated pairs give {unrelated:.2f}; items that "
            "swap target and distractor leave mean_diff and pca little shared direction to follow"
            for family, (cosine, unrelated, seed) in worst.items()]
