"""Core-circuit lock-in: per-checkpoint layer ranks of a surgery profile, and the step from which each layer's holds."""
from __future__ import annotations

from typing import Mapping

import numpy as np

TOLERANCE = 1  # a layer has locked in once its rank stays within ±TOLERANCE of its final rank


def ranks(profile: Mapping[int, float]) -> dict[int, int]:
    """Layer -> rank by effect, 1 = the largest (ties: the lower layer first; nan counts as the smallest)."""
    layers = sorted(profile)
    values = np.array([profile[layer] for layer in layers], dtype=float)
    values = np.where(np.isnan(values), -np.inf, values)
    order = sorted(range(len(layers)), key=lambda i: (-values[i], layers[i]))
    return {layers[i]: r for r, i in enumerate(order, 1)}


def lock_in_steps(profiles_by_step: Mapping[int, Mapping[int, float]], tolerance: int = TOLERANCE) -> dict[int, int]:
    """Layer -> the first checkpoint step from which its rank among the layers stays within ±`tolerance` of its
    rank at the last checkpoint, at every later checkpoint too (so every layer locks in, at the last step at the
    latest). `profiles_by_step`: step -> {layer: effect} (the surgery profile at that checkpoint: KL of dropping
    the layer's LoRA to the full adapter); every checkpoint must name the same layers."""
    steps = sorted(profiles_by_step)
    if not steps:
        return {}
    layers = set(profiles_by_step[steps[-1]])
    if any(set(profiles_by_step[s]) != layers for s in steps):
        raise ValueError("lock_in_steps: every checkpoint's profile must name the same layers")
    by_step = [ranks(profiles_by_step[s]) for s in steps]
    final = by_step[-1]
    out = {}
    for layer in sorted(layers):
        locked = steps[-1]
        for i in range(len(steps) - 1, -1, -1):  # walk back while the rank holds
            if abs(by_step[i][layer] - final[layer]) > tolerance:
                break
            locked = steps[i]
        out[layer] = locked
    return out
