"""Claim cards: findings stated from a sweep's numbers and graded A / B / C by their cross-seed evidence.

A claim rests on one number per seed, x_s (e.g. the family-mean KL of mean-ablating the hub
layer in seed s), on whether each seed supports the claim (its own hub is the claimed layer;
its value is beyond its own control value in the claimed direction), and, where the sweep has
one, on the same number under a control, c_s (the random steering vector at the same layer
and strength; the median layer of the same profile). `direction` is +1 when the claim says
"larger than the control", -1 for "smaller".

Effect size (printed on every card with its definition):
  with a control:    d = direction * (mean(x) - mean(c)) / sqrt((std(x)^2 + std(c)^2) / 2)
                     (Cohen's d over seeds, pooled std, ddof=1);
  without a control: d = direction * mean(x) / std(x)   (the cross-seed signal-to-noise);
  one seed: d is undefined (nan); a pooled std of 0 gives +-inf.

Grading rule (n = seeds with a value, k = seeds that support the claim):
  C  if n = 1 (a single seed), or k <= n / 2 (the seeds do not mostly agree: hub / sign
     disagreement), or there is a control and direction * mean(x) <= max_s direction * c_s
     (the mean lies within, or short of, the control's range over seeds);
  A  if n >= 3, k = n (every seed agrees), there is a control, every seed is beyond the
     control's whole range (min_s direction * x_s > max_s direction * c_s) and d >= 2;
  B  otherwise: at least two seeds, most of them agree, the mean beyond the control's range,
     but short of A (fewer than 3 seeds, a dissenting seed, overlap with the control, d < 2,
     or no control in the sweep: a claim without a control is at best B).
A knock-out (a steering vector lowering the target's logit difference) is graded A only if it
is also selective: selectivity (the target log-prob drop on its family / the mean drop on the
sweep's other families, mean over seeds) >= 2. Otherwise it is at best B and its card says
"not selective" (with one family in the sweep selectivity is not measured: at best B).

A card that compares sweeps (or models) whose settings differ (families, components, methods,
positions, ...) says which differ and is capped at C, whatever its evidence.

Held-out selection: a card that picks one cell out of many (steering: the boost and the
knock-out of each vector type, the best cell against prompting) picks it on the selection half
of the eval items (a seeded split, fixed per family and seed) and states its numbers, the
seeds agreeing and the grade on the other half (the reporting half), so that the pick does
not inflate the grade. The card also prints the effect on the selection half, and the cell
and grade that choosing and grading on all items would give. Sweeps logged before the halves
existed are chosen and graded on all items, and their cards say so.
Steering cards choose, among the cells whose mean effect (on the selection half) is in the
claimed direction and beyond the control's whole range over seeds at the same layer and
strength, the one with the largest own effect; the control is the random vector at that cell.
Cards comparing steering with the prompting baseline take the k-shot prompt (the same family and
seed) as the control.
Cards are ranked by grade, then by d capped at 10 (largest first; undefined last): past ten
pooled standard deviations the std of a few seeds is mostly luck and no longer orders claims,
so ties keep the order in which the section states its claims (a hub before its runners-up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MARGIN_D = 2.0  # A needs the effect to exceed the control by two pooled standard deviations
MIN_SEEDS_A = 3
SELECTIVE_A = 2.0  # a knock-out graded A must drop its own family's target at least twice the others'
RANK_CAP = 10.0  # d beyond this does not reorder cards


@dataclass(frozen=True)
class Evidence:
    """One number per seed for a claim, whether each seed supports it, and the control's numbers (if any)."""

    values: dict[int, float]  # seed -> x_s
    agree: dict[int, bool]  # seed -> does this seed support the claim
    control: dict[int, float] | None = None  # seed -> c_s; None: the sweep has no control for this claim
    direction: int = 1  # +1: the claim says larger (than the control, or than 0); -1: smaller
    selectivity: float | None = None  # knock-out claims only: own / collateral target log-prob drop

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def n_agree(self) -> int:
        return sum(bool(self.agree.get(s, False)) for s in self.values)


def _std(values) -> float:
    return float(np.std(list(values), ddof=1)) if len(values) > 1 else float("nan")


def effect_size(ev: Evidence) -> float:
    """d as defined in the module docstring."""
    if ev.n < 2:
        return float("nan")
    x = list(ev.values.values())
    if ev.control:
        c = list(ev.control.values())
        diff = ev.direction * (np.mean(x) - np.mean(c))
        spread = math.sqrt((_std(x) ** 2 + (_std(c) ** 2 if len(c) > 1 else 0.0)) / 2)
    else:
        diff, spread = ev.direction * float(np.mean(x)), _std(x)
    if spread == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return float(diff / spread)


def grade(ev: Evidence) -> tuple[str, str]:
    """(grade, why) by the rule in the module docstring."""
    n, k, sign = ev.n, ev.n_agree, ev.direction
    if n < 2:
        return "C", "a single seed"
    if 2 * k <= n:
        return "C", f"only {k} of {n} seeds agree"
    separated = False
    if ev.control:
        ceiling = max(sign * c for c in ev.control.values())
        if sign * float(np.mean(list(ev.values.values()))) <= ceiling:
            return "C", "the mean lies within the control's range"
        separated = min(sign * x for x in ev.values.values()) > ceiling
    d = effect_size(ev)
    short = [why for failed, why in (
        (n < MIN_SEEDS_A, f"{n} seeds (A needs {MIN_SEEDS_A})"),
        (k < n, f"{k} of {n} seeds agree"),
        (not ev.control, "no control in this sweep"),
        (bool(ev.control) and not separated, "some seeds overlap the control's range"),
        (bool(ev.control) and not d >= MARGIN_D, f"d = {d:.2g} < {MARGIN_D:g}"),
        (ev.selectivity is not None and not ev.selectivity >= SELECTIVE_A, _not_selective(ev.selectivity)),
    ) if failed]
    if not short:
        return "A", f"all {n} seeds agree and every seed clears the control's range with d >= {MARGIN_D:g}"
    return "B", "; ".join(short)


def _not_selective(selectivity: float | None) -> str:
    if selectivity is None or math.isnan(selectivity):
        return "not selective: selectivity not measured (no other families in the sweep)"
    return f"not selective: selectivity {selectivity:.2g} < {SELECTIVE_A:g}"


D_WITH_CONTROL = "d = (mean - control mean) / pooled cross-seed std"
D_WITHOUT_CONTROL = "d = mean / cross-seed std (no control)"


@dataclass(frozen=True)
class ClaimCard:
    """A finding as a reader sees it: every number comes from the sweep's runs."""

    claim: str  # one sentence
    figure: str  # id of the figure that shows it
    n_seeds: int
    mean: float  # of `metric` over seeds
    std: float  # ddof=1; nan for one seed
    effect_size: float  # see `effect_def`
    grade: str  # A, B or C
    caveats: tuple[str, ...] = ()
    metric: str = ""  # what mean and std are of
    control: str = ""  # what the control is; "" when the sweep has none
    control_mean: float = float("nan")
    control_std: float = float("nan")
    effect_def: str = ""
    agree: str = ""  # "3 of 3 seeds"
    why: str = ""  # the grading rule's reason for this grade
    extra: dict = field(default_factory=dict, compare=False)  # section-specific numbers (hub layer, depth, ...)


def card(claim: str, figure: str, metric: str, ev: Evidence, control: str = "", caveats=(), cap: str = "A",
         cap_why: str = "", **extra) -> ClaimCard:
    """Grade `ev` and fill in a card; `control` names the control (it must be given iff ev.control is); the grade is
    no better than `cap` (`cap_why` says why)."""
    x = list(ev.values.values())
    c = list((ev.control or {}).values())
    letter, why = grade(ev)
    if "ABC".index(letter) < "ABC".index(cap):
        letter, why = cap, f"capped at {cap}: {cap_why} (the evidence alone: {letter}, {why})"
    return ClaimCard(claim, figure, ev.n, float(np.mean(x)) if x else float("nan"), _std(x), effect_size(ev), letter,
                     tuple(caveats), metric, control if ev.control else "",
                     float(np.mean(c)) if c else float("nan"), _std(c),
                     D_WITH_CONTROL if ev.control else D_WITHOUT_CONTROL, f"{ev.n_agree} of {ev.n} seeds", why,
                     dict(extra))


def ranked(cards: list[ClaimCard]) -> list[ClaimCard]:
    """Grade A first, then the largest effect size (capped at RANK_CAP); undefined last; otherwise stable."""
    def key(c: ClaimCard):
        d = c.effect_size
        return ("ABC".index(c.grade), math.isnan(d), -min(d, RANK_CAP) if not math.isnan(d) else 0.0)

    return sorted(cards, key=key)
