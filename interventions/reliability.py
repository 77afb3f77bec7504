"""Per-item reliability of a steering effect and the geometry of contrastive pairs: pure functions on tensors.

A trial's per-item shift is LD_steered - LD_clean on each eval item. Besides its mean (ld_delta)
a trial reports its median, the share of items it moves against the sign of the strength (the
anti-steerable fraction, Tan et al. 2024), a seeded bootstrap interval of the mean, and the mean
on each half of a seeded split of the eval items (claim cards pick a cell on one half and report
it on the other). Pair consistency is the mean cosine between each train pair's difference and
their mean difference: how much the pairs agree on one direction.
"""
from __future__ import annotations

import zlib

import torch
from torch import Tensor

from interventions.context import seeded_generator

N_BOOT = 1000  # bootstrap resamples of the items
LEVEL = 0.95  # the interval's coverage


def anti_steerable_fraction(shift: Tensor, direction: float) -> float:
    """Share of items whose shift has the opposite sign of `direction` (nan without a direction or items)."""
    if direction == 0 or len(shift) == 0:
        return float("nan")
    return float((torch.sign(torch.as_tensor(direction)) * shift.double() < 0).double().mean())


def bootstrap_ci(values: Tensor, gen: torch.Generator, n_boot: int = N_BOOT,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean over `n_boot` resamples of the items (with replacement)."""
    values = values.double().cpu()
    if len(values) == 0:
        return float("nan"), float("nan")
    picks = torch.randint(len(values), (n_boot, len(values)), generator=gen)  # (n_boot, n_items)
    means = values[picks].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(low), float(high)


def family_key(family: str) -> int:
    """A stable integer for a family name (Python's hash() changes between processes)."""
    return zlib.crc32(family.encode())


def halves(n: int, seed: int, family: str) -> tuple[Tensor, Tensor]:
    """(selection, reporting) item indices: a seeded split of range(n), fixed per (family, seed); sizes n//2, n-n//2."""
    order = torch.randperm(n, generator=seeded_generator(seed, family_key(family), n))
    return order[: n // 2].sort().values, order[n // 2:].sort().values


def _mean(x: Tensor) -> float:
    return float(x.double().mean()) if len(x) else float("nan")


def shift_metrics(shift: Tensor, direction: float, seed: int, family: str) -> dict[str, float]:
    """Median, anti-steerable fraction, bootstrap interval and the two halves' means of per-item shifts (n_items,)."""
    low, high = bootstrap_ci(shift, seeded_generator(seed, family_key(family), len(shift), 1))
    select, report = halves(len(shift), seed, family)
    return {
        "ld_delta_median": float(shift.double().median()) if len(shift) else float("nan"),
        "anti_steerable_fraction": anti_steerable_fraction(shift, direction),
        "ld_delta_ci_low": low,
        "ld_delta_ci_high": high,
        "ld_delta_select": _mean(shift[select]),
        "ld_delta_report": _mean(shift[report]),
    }


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def pair_consistency(diffs: Tensor) -> float:
    """Mean cosine between each pair's difference (n_pairs, d_model) and the mean difference."""
    diffs = diffs.double()
    mean = diffs.mean(0)
    cos = diffs @ mean / (diffs.norm(dim=-1) * mean.norm()).clamp_min(1e-300)
    return float(cos.mean())
