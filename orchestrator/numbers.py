"""How numbers read in tables, sentences and cards: one NaN-aware formatter for the whole tree."""
from __future__ import annotations

import math


def undefined(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x, spec: str = ".3g") -> str:
    """x in format `spec` ('.3g': three significant digits); '–' when undefined, '∞' / '-∞' when infinite."""
    if undefined(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return format(x, spec)


def pm(mean, std, spec: str = ".3g", std_spec: str = ".2g") -> str:
    """'mean ± std'; the mean alone where the std is undefined (one seed); '–' where the mean is."""
    if undefined(mean):
        return "–"
    return fmt(mean, spec) if undefined(std) else f"{fmt(mean, spec)} ± {fmt(std, std_spec)}"
