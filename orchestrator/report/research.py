"""The research's figures per key-metrics row and model size (FIGURES, one declaration each), and the rules that say
whether our value reproduces one.

The figures are the seeds' (/work/shared/seeds: Qwen2.5 0.5B / 1.5B / 3B base models in bf16, 12 families, 3 seeds).
Our built-in Qwen2.5-Coder instruct models compare with the research's size of the same architecture (OURS); every
other model has no research figure. A row's rule is declared on the row (atlas_table.py); a figure marked `upper`
is a bound the research gives ("the zone starts at L24 or shallower"), which `near` reads as ours <= bound + tol.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from interventions.registry import Registry

SIZES = ("0.5B", "1.5B", "3B")
OURS = {"qwen2.5-coder-0.5b": "0.5B", "qwen2.5-coder-1.5b": "1.5B"}  # Coder instruct models; the research used base


@dataclass(frozen=True)
class Figure:
    """The research's value for one row at one model size."""

    value: float
    text: str  # as the table prints it
    upper: bool = False  # the research gives an upper bound, not the value


@dataclass(frozen=True)
class Rule:
    """When our value reproduces the research's figure: `holds(ours, figure)`, stated as `text`."""

    text: str
    holds: Callable[[float, Figure], bool]


def near(tol: float, unit: str = "") -> Rule:
    """|ours - research| <= tol (for an upper-bound figure: ours <= bound + tol)."""
    def holds(ours: float, fig: Figure) -> bool:
        return ours <= fig.value + tol if fig.upper else abs(ours - fig.value) <= tol + 1e-12
    return Rule(f"within ±{tol:g}{unit} of the research's" if tol else f"the same {unit.strip() or 'value'}", holds)


def factor(f: float) -> Rule:
    """ours / research within [1/f, f] (so of the same sign)."""
    def holds(ours: float, fig: Figure) -> bool:
        return fig.value != 0 and 1 / f <= ours / fig.value <= f
    return Rule(f"the same sign and within a factor {f:g} of the research's", holds)


def side(x: float) -> Rule:
    """Both above x, or both at or below it."""
    return Rule(f"on the same side of {x:g} as the research's", lambda ours, fig: (ours > x) == (fig.value > x))


def at_least(k: float) -> Rule:
    """Ours >= k, as the research's figure is (the figure's own size is not compared)."""
    return Rule(f">= {k:g}, as the research's", lambda ours, fig: ours >= k)


FIGURES: Registry[Figure] = Registry("research figure")


def key(row: str, size: str) -> str:
    return f"{row} @ {size}"


def _figure(row: str, size: str, value: float, text: str, upper: bool = False) -> None:
    FIGURES.register(key(row, size))(Figure(value, text, upper))


def figure(row: str, model: str) -> Figure | None:
    """The research's figure for `row` at the size `model` compares with; None: none at this size (or no size)."""
    size = OURS.get(model)
    return FIGURES.get(key(row, size)) if size and key(row, size) in FIGURES else None


def has_figures(row: str) -> bool:
    return any(key(row, s) in FIGURES for s in SIZES)


# Phase 3 (12 families, 3 seeds) moved the 1.5B hub from Phase 2's L26 to L14; its KL there is not given.
_figure("hub layer", "0.5B", 2, "L2")
_figure("hub layer", "1.5B", 14, "L14 (Phase 3; Phase 2: L26)")
_figure("hub layer", "3B", 34, "L34")
_figure("hub depth", "0.5B", 2 / 24, "0.08 (L2 of 24)")
_figure("hub depth", "1.5B", 14 / 28, "0.50 (L14 of 28)")
_figure("hub depth", "3B", 34 / 36, "0.94 (L34 of 36)")
_figure("hub max KL", "0.5B", 19.11, "19.11 (L2)")
_figure("hub max KL", "1.5B", 13.70, "13.70 (Phase 2's L26)")
_figure("hub max KL", "3B", 221.34, "221.34 (L34)")
_figure("MLP max effect", "0.5B", 8.12, "8.12 (L2's MLP)")
_figure("MLP max effect", "1.5B", 2.58, "2.58 (L0's MLP)")
_figure("head max effect", "0.5B", 0.046, "0.046")
_figure("head max effect", "1.5B", 1.023, "1.023 (L0 H3, arithmetic)")
_figure("head family coverage", "1.5B", 3, "L0 H3: 3 families (arithmetic, code syntax, copying)")
_figure("best steering boost", "0.5B", 2.16, "+2.16 (L12)")
_figure("best steering boost", "1.5B", 4.64, "+4.64 (L21)")
_figure("knockout selectivity", "0.5B", 11654, "11,654 (L19, s = -2)")
_figure("knockout selectivity", "1.5B", 0.24, "0.24 (L21)")
_figure("layer skipping", "0.5B", 0.0, "0 (every skip tested)")
_figure("layer skipping", "1.5B", 0.0, "0 (every single-layer skip; skip_mid_5: 0.10)")
_figure("layer skipping", "3B", 0.0, "0 (every skip tested)")
_figure("early exit", "0.5B", 23 / 24, "0.96 (only L23, the full model; L22: 0% top-1)")
_figure("early exit", "1.5B", 27 / 28, "0.96 (only L27; earlier exits 0-7% top-1)")
_figure("multi-layer steering", "0.5B", 1.17, "+1.17")
_figure("multi-layer steering", "1.5B", -7.20, "-7.20")
_figure("cross-model transfer zone", "0.5B", 21 / 24, "0.875 (L21-L23 recover >= 95%; L20: 87%)")
_figure("cross-model transfer zone", "1.5B", 24 / 28, "<= 0.857 (L24-L27 recover >= 97.9%; shallower not given)",
        upper=True)
_figure("adapter norm-effect correlation", "0.5B", 0.85, "0.85")
_figure("adapter norm-effect correlation", "1.5B", 0.54, "0.54")
# The generation check (30 prompts x bf16 / 8-bit / 4-bit NF4, base models), ranges over the three precisions: no
# key-metrics row and no rule, printed beside the generation table's columns (sections/generation.py).
GENERATION: Registry[Figure] = Registry("research generation figure")


def generation_figure(column: str, model: str) -> Figure | None:
    """The research's figure for a generation-table column at the size `model` compares with (None: none)."""
    size = OURS.get(model)
    return GENERATION.get(key(column, size)) if size and key(column, size) in GENERATION else None


for _column, _size, _value, _text in (
        ("loop_share", "0.5B", 0.48, "13-16 of 30 (0.43-0.53), every precision"),
        ("loop_share", "1.5B", 0.18, "3-8 of 30 (0.10-0.27)"),
        ("adherence", "0.5B", 0.035, "0-0.07 (bf16: 0)"),
        ("adherence", "1.5B", 0.15, "0.13-0.17"),
        ("speed_vs_bfloat16", "0.5B", 0.51, "0.45-0.58 at 8-bit and 4-bit"),
        ("speed_vs_bfloat16", "1.5B", 0.91, "nf4 0.91 (17.1 vs 18.8 tok/s); 8-bit the slowest")):
    GENERATION.register(key(_column, _size))(Figure(_value, _text))
