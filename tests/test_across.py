"""The report page of a sweep over several prompt lengths or precisions (orchestrator/report/across.py): a card per
family saying whether the hub or the strongest steering cell moves, graded on each seed's own pick; then each
value's own section; and the generation table per model x precision beside the research's figures."""
from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.report.across import moves_cards
from orchestrator.report.html import write_page
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import build
from orchestrator.report.sections.generation import generation_table


def _record(kind: str, rows: list[dict], axes: list[str]) -> SweepRecord:
    frame = pd.DataFrame(rows)
    frame["run_id"] = [f"r{i}" for i in range(len(frame))]
    return SweepRecord("t", kind, "m", 4, frame, pd.DataFrame(), axes)


def _hub_rows(hubs: dict[tuple[str, str, int], int], layers=range(4)) -> list[dict]:
    """Ablation rows whose KL peaks at the given layer per (family, length, seed)."""
    return [{"family": f, "length": b, "seed": s, "layer": layer, "component": "layer", "method": "mean",
             "kl": 1.0 + (layer == hub) + 0.01 * s, "model": "m"}
            for (f, b, s), hub in hubs.items() for layer in layers]


def _hubs(family: str, per_length: dict[str, int], seeds=(0, 1, 2)) -> dict[tuple[str, str, int], int]:
    return {(family, b, s): h for b, h in per_length.items() for s in seeds}


AXES = ["seed", "family", "length", "layer", "component", "method"]


def test_hub_cards_say_per_family_whether_the_hub_moves_and_each_bucket_gets_its_own_section():
    hubs = {**_hubs("copying", {"short": 2, "long": 2}), **_hubs("json_schema", {"short": 1, "long": 3})}
    built = build(_record("ablation", _hub_rows(hubs), AXES))
    claims = {c.claim: c for c in built.cards}
    moves = claims["json_schema: hub moves across lengths (short: L1, long: L3)"]
    stable = claims["copying: hub stable across lengths at L2"]
    assert (moves.grade, moves.n_seeds, moves.mean) == ("B", 3, 1.0)  # every seed moved once; no control: B
    assert (stable.grade, stable.mean) == ("B", 0.0)
    assert moves.figure == stable.figure == "hub_by_length"
    ids = [f.id for f in built.figures]
    assert ids[0] == "hub_by_length"
    assert any(i.startswith("length_short_") for i in ids) and any(i.startswith("length_long_") for i in ids)
    assert any(c.claim.startswith("length long: ") for c in built.cards)  # each bucket's own cards, prefixed
    titles = [t for t, _ in built.tables]
    assert "hubs across lengths" in titles
    table = dict(built.tables)["hubs across lengths"].set_index("family")
    assert table.loc["json_schema", "verdict"] == "hub moves across lengths"


def test_a_seed_whose_hub_does_not_move_weakens_the_moves_card():
    hubs = {**_hubs("copying", {"short": 1, "long": 3}, seeds=(0, 1)), **_hubs("copying", {"short": 1, "long": 1},
                                                                             seeds=(2,))}
    picks = pd.DataFrame([{"family": f, "value": b, "seed": s, "pick": h} for (f, b, s), h in hubs.items()])
    (one,) = moves_cards(picks, "length", "hub", "hub_by_length", lambda p: f"L{p}")
    assert one.claim == "copying: hub moves across lengths (short: L1, long: L3)"
    assert one.agree == "2 of 3 seeds" and one.grade == "B"
    picks.loc[picks["seed"] == 1, "pick"] = 1  # now only seed 0 moves: the seeds mostly disagree with the mode
    (one,) = moves_cards(picks, "length", "hub", "hub_by_length", lambda p: f"L{p}")
    assert one.claim == "copying: hub stable across lengths at L1" and one.agree == "2 of 3 seeds"


def _steer_rows(gains: dict[tuple[str, str], list[float]]) -> list[dict]:
    """Per (family, length): mean_diff at layer 1, strength 1 gains gains[seed] over the random vector (0.1)."""
    rows = []
    for (f, b), per_seed in gains.items():
        for s, gain in enumerate(per_seed):
            for vtype, value in (("mean_diff", 0.1 + gain), ("random", 0.1)):
                rows.append({"family": f, "length": b, "seed": s, "layer": 1, "strength": 1.0, "vector_type": vtype,
                             "ld_delta": value, "kl": 0.1, "model": "m"})
            rows.append({"family": f, "length": b, "seed": s, "layer": None, "strength": None,
                         "vector_type": "prompt", "ld_delta": 0.5, "kl": 0.0, "model": "m"})
    return rows


def test_steering_cards_say_whether_the_gain_over_random_holds_at_the_longest_bucket():
    gains = {("factual_recall", "short"): [2.0, 2.0], ("factual_recall", "long"): [0.4, 0.2],  # 20 %, 10 % kept
             ("copying", "short"): [2.0, 1.0], ("copying", "long"): [1.5, 0.9]}  # 75 %, 90 % kept
    built = build(_record("steering", _steer_rows(gains), ["seed", "family", "length", "layer", "strength",
                                                          "vector_type"]))
    degrades = next(c for c in built.cards if c.claim.startswith("factual_recall: steering degrades with length"))
    holds = next(c for c in built.cards if c.claim.startswith("copying: steering holds across lengths"))
    assert degrades.mean == pytest.approx(((0.2 - 0.5) + (0.1 - 0.5)) / 2)
    assert holds.mean == pytest.approx(((0.75 - 0.5) + (0.9 - 0.5)) / 2)
    assert degrades.grade == holds.grade == "B" and degrades.effect_size > 0 and holds.effect_size > 0
    assert "steering_gain_by_length" in [f.id for f in built.figures]
    assert "(gain over random short +2.00, long +0.30)" in degrades.claim


def test_the_generation_table_compares_decode_speed_with_bfloat16_and_shows_the_research():
    rows = [{"model": m, "precision": p, "decoding": "greedy", "seed": 0, "family": "generation_prompts",
             "loop_share": 0.5, "repetition": 0.4, "adherence": 0.1, "full_adherence": 0.0,
             "decode_tokens_per_s": speed}
            for m, speeds in (("qwen2.5-coder-0.5b", {"bfloat16": 20.0, "nf4": 10.0}),
                              ("smollm2-135m", {"bfloat16": 50.0, "nf4": 40.0}))
            for p, speed in speeds.items()]
    table = generation_table(pd.DataFrame(rows), ["model", "precision", "decoding"]).set_index(["model", "precision"])
    assert table.loc[("qwen2.5-coder-0.5b", "nf4"), "speed_vs_bfloat16"] == pytest.approx(0.5)
    assert table.loc[("smollm2-135m", "nf4"), "speed_vs_bfloat16"] == pytest.approx(0.8)
    assert table.loc[("qwen2.5-coder-0.5b", "nf4"), "research loop_share"].startswith("13-16 of 30")
    assert table.loc[("smollm2-135m", "nf4"), "research loop_share"] == ""  # no research figure at this size


def test_the_page_shows_the_sections_tables(tmp_path):
    hubs = {**_hubs("copying", {"short": 2, "long": 2}), **_hubs("json_schema", {"short": 1, "long": 3})}
    built = build(_record("ablation", _hub_rows(hubs), AXES))
    page = write_page(tmp_path, "report.html", "t", [], [], built.figures, built.cards, tables=built.tables).html
    text = page.read_text()
    assert "<h3>hubs across lengths</h3>" in text and "hub moves across lengths" in text
    assert text.count("<table class=\"dataframe atlas\"") == len(built.tables)


def test_a_kind_without_a_comparison_keeps_every_precision_in_one_section():
    rows = [{"model": "m", "precision": p, "decoding": "greedy", "seed": 0, "family": "generation_prompts",
             "loop_share": 0.0, "repetition": 0.1, "adherence": 0.5, "full_adherence": 0.5,
             "decode_tokens_per_s": speed} for p, speed in (("float32", 10.0), ("bfloat16", 20.0), ("nf4", 5.0))]
    built = build(_record("generation", rows, ["seed", "family", "precision", "decoding"]))
    assert [f.id for f in built.figures] == ["generation_decoding"]
    (title, table), = built.tables
    assert list(table["precision"]) == ["float32", "bfloat16", "nf4"]
    assert list(table["speed_vs_bfloat16"]) == ["0.5", "1", "0.25"]


def test_buckets_are_compared_shortest_first_whatever_order_the_runs_come_in():
    hubs = {**_hubs("copying", {"long": 3, "short": 1, "medium": 1})}
    built = build(_record("ablation", _hub_rows(hubs), AXES))
    assert "copying: hub moves across lengths (short: L1, medium: L1, long: L3)" in [c.claim for c in built.cards]
    assert [f.id for f in built.figures][1].startswith("length_short_")
