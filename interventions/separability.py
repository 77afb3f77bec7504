"""Skill separability (SSS): the COMPONENTS registry of [0, 1] scores of one skill's evidence and their mean."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from interventions.registry import Registry


@dataclass(frozen=True)
class SkillEvidence:
    """What the sweeps measured for one (model, family, seed); a field left None was not measured.

    own: the family's layer-ablation effect per layer (KL, >= 0), in layer order.
    others: the same ablation (same component, method, layers) on each other family's items, shape
        (other families, layers).
    boost: steering's best `ld_delta` toward the family beyond the random vector at the same (layer, strength).
    recovery: cross-model patching's `recovery` per layer, the last layer left out (1 there by construction).
    """

    own: np.ndarray | None = None
    others: np.ndarray | None = None
    boost: float | None = None
    recovery: np.ndarray | None = None


Component = Callable[[SkillEvidence], "float | None"]
COMPONENTS: Registry[Component] = Registry("separability component")


def squash(x: float) -> float:
    """x / (1 + x) for x >= 0 (negative -> 0): 0 -> 0, 1 -> 0.5, monotone, below 1 for any finite x."""
    x = max(0.0, float(x))
    return x / (1.0 + x) if math.isfinite(x) else 1.0


def _own(ev: SkillEvidence) -> np.ndarray | None:
    if ev.own is None:
        return None
    own = np.abs(np.asarray(ev.own, dtype=float))
    own = own[np.isfinite(own)]
    return own if own.size else None


@COMPONENTS.register("sharpness")
def sharpness(ev: SkillEvidence) -> float | None:
    """1 - H(p) / log(n) with p = |effect| / sum |effect| over the n layers: 1 when one layer carries the whole
    ablation effect, 0 when every layer carries the same (or none does). None with fewer than 2 layers."""
    own = _own(ev)
    if own is None or own.size < 2:
        return None
    total = own.sum()
    if total <= 0:
        return 0.0
    p = own[own > 0] / total
    return float(min(1.0, max(0.0, 1.0 + (p * np.log(p)).sum() / math.log(own.size))))


@COMPONENTS.register("knockout")
def knockout(ev: SkillEvidence) -> float | None:
    """squash(peak KL): the largest layer-ablation KL on the family's own items, k / (1 + k) (1 nat -> 0.5)."""
    own = _own(ev)
    return None if own is None else squash(own.max())


@COMPONENTS.register("collateral")
def collateral(ev: SkillEvidence) -> float | None:
    """1 - min(1, mean over other families of their effect at the family's peak layer / the family's own effect
    there): 1 when knocking out the peak layer leaves the other families alone, 0 when they suffer as much or more."""
    own = _own(ev)
    if own is None or ev.others is None or ev.own is None:
        return None
    others = np.abs(np.asarray(ev.others, dtype=float)).reshape(-1, len(ev.own))
    if not others.shape[0]:
        return None
    at = int(np.nanargmax(np.abs(np.asarray(ev.own, dtype=float))))
    spill = np.nanmean(others[:, at])
    peak = abs(float(ev.own[at]))
    if not math.isfinite(spill):
        return None
    if peak <= 0:
        return 0.0
    return float(1.0 - min(1.0, spill / peak))


@COMPONENTS.register("insertion")
def insertion(ev: SkillEvidence) -> float | None:
    """squash(best boost beyond the random vector): steering toward the skill adds logit difference the random
    direction does not (2 logits -> 0.67); a boost no better than random -> 0."""
    if ev.boost is None or not math.isfinite(ev.boost):
        return None
    return squash(ev.boost)


@COMPONENTS.register("transfer")
def transfer(ev: SkillEvidence) -> float | None:
    """Mean over layers of the trained (adapter-merged) model's recovery, each clipped to [0, 1]: how much of the
    trained skill its residual stream carries into the base model, layer by layer."""
    if ev.recovery is None:
        return None
    rec = np.asarray(ev.recovery, dtype=float)
    rec = rec[np.isfinite(rec)]
    return float(np.clip(rec, 0.0, 1.0).mean()) if rec.size else None


def components(ev: SkillEvidence) -> dict[str, float]:
    """Every registered component that the evidence allows (None ones left out), by name."""
    out = {}
    for name in COMPONENTS:
        value = COMPONENTS.get(name)(ev)
        if value is not None:
            out[name] = float(value)
    return out


def score(parts: dict[str, float]) -> float:
    """SSS: the unweighted mean of the components present (nan when none is)."""
    return float(np.mean(list(parts.values()))) if parts else float("nan")
