"""The grading rule of claim cards, branch by branch, on hand-built evidence and on constructed sweep tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.report.claims import ClaimCard, Evidence, card, effect_size, grade, ranked
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import SECTIONS


def ev(values, agree=None, control=None, direction=1) -> Evidence:
    values = dict(enumerate(values))
    agree = dict(enumerate(agree)) if agree is not None else {s: True for s in values}
    return Evidence(values, agree, dict(enumerate(control)) if control is not None else None, direction)


# The rule, one branch per row: (values, agree, control, direction, grade)
RULE = [
    ("single seed", [5.0], None, [0.1], 1, "C"),
    ("all agree, beyond the control by a margin", [5.0, 5.2, 4.9], None, [0.1, 0.2, 0.15], 1, "A"),
    ("knock-out: below the control by a margin", [-4.0, -4.2, -3.9], None, [-1.0, -0.8, -1.1], -1, "A"),
    ("mean within the control's range", [1.0, 1.1, 0.9], None, [0.5, 1.5, 0.2], 1, "C"),
    ("mean short of the control (wrong side)", [0.1, 0.2, 0.1], None, [1.0, 1.1, 1.2], 1, "C"),
    ("one dissenting seed of three", [5.0, 5.2, 4.9], [True, True, False], [0.1, 0.2, 0.15], 1, "B"),
    ("one of three seeds agrees", [5.0, 5.2, 4.9], [True, False, False], [0.1, 0.2, 0.15], 1, "C"),
    ("two of four seeds agree (no majority)", [5.0, 5.2, 4.9, 5.1], [True, True, False, False], [0.1] * 4, 1, "C"),
    ("two seeds only: at best B", [5.0, 5.2], None, [0.1, 0.2], 1, "B"),
    ("a seed overlaps the control's range", [5.0, 5.2, 0.9], None, [0.1, 0.2, 1.0], 1, "B"),
    ("separated but d < 2", [10.0, 30.0, 50.0], None, [0.0, 1.0, 9.0], 1, "B"),
    ("no control: at best B", [5.0, 5.2, 4.9], None, None, 1, "B"),
]


@pytest.mark.parametrize("why,values,agree,control,direction,expected", RULE, ids=[r[0] for r in RULE])
def test_grading_rule(why, values, agree, control, direction, expected):
    letter, reason = grade(ev(values, agree, control, direction))
    assert letter == expected, reason
    assert reason


def test_effect_size_is_cohens_d_against_the_control_and_mean_over_std_without():
    x, c = [5.0, 5.2, 4.9], [0.1, 0.2, 0.15]
    pooled = math.sqrt((np.std(x, ddof=1) ** 2 + np.std(c, ddof=1) ** 2) / 2)
    assert effect_size(ev(x, control=c)) == pytest.approx((np.mean(x) - np.mean(c)) / pooled)
    assert effect_size(ev([-4.0, -4.2], control=[-1.0, -0.8], direction=-1)) > 0  # in the claimed direction
    assert effect_size(ev(x)) == pytest.approx(np.mean(x) / np.std(x, ddof=1))
    assert math.isnan(effect_size(ev([5.0], control=[0.0])))
    assert effect_size(ev([2.0, 2.0, 2.0], control=[0.0, 0.0, 0.0])) == math.inf
    assert grade(ev([2.0, 2.0, 2.0], control=[0.0, 0.0, 0.0]))[0] == "A"


def test_card_numbers_come_from_the_evidence():
    made = card("claim", "fig", "kl", ev([5.0, 5.2, 4.9], control=[0.1, 0.2, 0.15]), "median layer", ["c1"])
    assert (made.n_seeds, made.grade, made.agree) == (3, "A", "3 of 3 seeds")
    assert made.mean == pytest.approx(np.mean([5.0, 5.2, 4.9]))
    assert made.std == pytest.approx(np.std([5.0, 5.2, 4.9], ddof=1))
    assert made.control_mean == pytest.approx(0.15) and made.control == "median layer"
    assert "control" in made.effect_def and made.caveats == ("c1",)
    bare = card("claim", "fig", "kl", ev([5.0, 5.2, 4.9]), "ignored without control values")
    assert bare.control == "" and "no control" in bare.effect_def and math.isnan(bare.control_mean)


def test_ranking_is_grade_then_capped_effect_size_then_stated_order():
    def c(name, letter, d):
        return ClaimCard(name, "f", 3, 0.0, 0.0, d, letter)

    cards = [c("b", "B", 5.0), c("a-first", "A", 50.0), c("c", "C", 99.0), c("a-big", "A", 160.0),
             c("a-small", "A", 3.0), c("a-nan", "A", float("nan"))]
    assert [x.claim for x in ranked(cards)] == ["a-first", "a-big", "a-small", "a-nan", "b", "c"]


def ablation_record(kl_by_seed: dict[int, list[float]], families=("antonyms", "copying")) -> SweepRecord:
    """A constructed ablation sweep: every family gets the seed's KL profile (layer/mean)."""
    rows = [{"run_id": f"{s}-{f}-{layer}", "model": "m", "kind": "ablation", "seed": s, "family": f,
             "component": "layer", "method": "mean", "layer": layer, "kl": kl, "accuracy_clean": 1.0}
            for s, kls in kl_by_seed.items() for f in families for layer, kl in enumerate(kls)]
    n_layers = len(next(iter(kl_by_seed.values())))
    return SweepRecord("t", "ablation", "m", n_layers, pd.DataFrame(rows), pd.DataFrame(),
                       ["seed", "family", "component", "method", "layer"])


def hub_card(record: SweepRecord) -> ClaimCard:
    cards = SECTIONS.get("ablation").build(record).cards
    return next(c for c in cards if "is the hub" in c.claim)


def test_a_hub_every_seed_agrees_on_far_above_the_median_layer_is_graded_A():
    table = {0: [1.0, 2.0, 9.0, 1.5, 1.0], 1: [1.1, 2.1, 9.3, 1.4, 1.0], 2: [0.9, 1.9, 9.1, 1.6, 1.2]}
    made = hub_card(ablation_record(table))
    assert made.grade == "A" and made.extra["layer"] == 2 and made.n_seeds == 3
    assert made.mean == pytest.approx(np.mean([9.0, 9.3, 9.1]))
    assert made.control_mean == pytest.approx(np.mean([1.5, 1.4, 1.6]))  # per-seed median layer
    assert "L2" in made.claim and "40% depth" in made.claim


def test_a_hub_from_one_seed_is_graded_C():
    assert hub_card(ablation_record({0: [1.0, 2.0, 9.0, 1.5]})).grade == "C"


def test_seeds_disagreeing_on_the_hub_give_B():
    table = {0: [1.0, 9.5, 9.0, 1.5, 1.0], 1: [1.1, 2.1, 9.3, 1.4, 1.0], 2: [0.9, 1.9, 9.1, 1.6, 1.2]}
    made = hub_card(ablation_record(table))
    assert (made.extra["layer"], made.grade, made.agree) == (2, "B", "2 of 3 seeds")


def test_a_hub_within_the_median_layers_range_is_graded_C():
    table = {0: [0.0, 4.5, 4.6, 4.55, 0.0], 1: [0.0, 0.0, 4.1, 0.0, 0.0], 2: [0.0, 0.0, 4.1, 0.0, 0.0]}
    made = hub_card(ablation_record(table))
    assert made.extra["layer"] == 2 and made.grade == "C" and "control's range" in made.why


def steering_record(cells: dict[tuple[str, int, float], list[float]]) -> SweepRecord:
    """A constructed steering sweep: (vector_type, layer, strength) -> ld_delta per seed, one family."""
    rows = [{"run_id": f"{v}-{layer}-{s}-{seed}", "model": "m", "kind": "steering", "seed": seed, "family": "antonyms",
             "layer": layer, "strength": s, "vector_type": v, "ld_delta": x, "kl": 0.1, "accuracy_clean": 1.0}
            for (v, layer, s), xs in cells.items() for seed, x in enumerate(xs)]
    return SweepRecord("t", "steering", "m", 4, pd.DataFrame(rows), pd.DataFrame(),
                       ["seed", "family", "layer", "strength", "vector_type"])


def test_steering_cards_are_graded_against_the_random_vector_at_the_same_cell():
    cells = {("mean_diff", 1, 1.0): [3.0, 3.1, 2.9], ("random", 1, 1.0): [-0.5, -0.4, -0.6],
             ("mean_diff", 1, -1.0): [-3.0, -3.2, -2.8], ("random", 1, -1.0): [-2.9, -3.3, -2.9],
             ("mean_diff", 2, 1.0): [0.5, 0.4, 0.6], ("random", 2, 1.0): [0.0, 0.1, -0.1],
             ("mean_diff", 2, -1.0): [-0.5, -0.4, -0.6], ("random", 2, -1.0): [-0.1, -0.45, 0.0]}
    built = SECTIONS.get("steering").build(steering_record(cells))
    boost = next(c for c in built.cards if "raises" in c.claim)
    knock = next(c for c in built.cards if "lowers" in c.claim)
    assert (boost.extra["layer"], boost.extra["strength"], boost.grade) == (1, 1.0, "A")
    assert boost.mean == pytest.approx(3.0) and boost.control_mean == pytest.approx(-0.5)
    # L1 -1 is not beyond random on average; L2 -1 is 0.32 beyond it, but a seed overlaps the control
    assert (knock.extra["layer"], knock.extra["strength"]) == (2, -1.0)
    assert knock.grade == "B" and "overlap" in knock.why
    assert [s.id for s in built.figures] == ["steering_heatmap"]


def test_steering_without_a_random_vector_is_at_best_B():
    cells = {("mean_diff", 1, 1.0): [3.0, 3.1, 2.9], ("mean_diff", 1, -1.0): [-3.0, -3.1, -2.9]}
    built = SECTIONS.get("steering").build(steering_record(cells))
    assert {c.grade for c in built.cards} == {"B"} and all(c.control == "" for c in built.cards)
    assert any("no random vector" in n for n in built.notes)
