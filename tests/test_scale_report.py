"""Reports of sweeps over several models (records built in memory): per-model split, depth cards, summaries, compare."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from interventions.registry import AtlasError
from orchestrator.report import compare, scale
from orchestrator.report.hubs import ablation_summary
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import SECTIONS

SHALLOW = {"layer": [1.0, 6.0, 2.0, 0.5], "mlp": [5.0, 1.0, 0.8, 0.6]}  # 4 layers: hub L1 (0.25), top MLP L0
DEEP = {"layer": [0.5, 1.0, 1.5, 2.0, 2.5, 9.0, 1.0, 0.5], "mlp": [4.0, 1.0, 0.5, 0.5, 0.2, 0.2, 0.1, 0.1]}  # L5
LAYERS = {"tiny-z": 4, "tiny-b": 8}  # names in the other order than their layer counts


def ablation_rows(model: str, profiles: dict, families=("antonyms", "copying"), positions=None) -> list[dict]:
    """One run per seed, family, component, method and layer; `mean` follows the profile, `zero` is flat-ish."""
    rows = []
    for seed in range(3):
        for family in families:
            for component, kls in profiles.items():
                for method in ("mean", "zero"):
                    for layer, kl in enumerate(kls):
                        value = (kl if method == "mean" else 1.0 + 0.1 * layer) + 0.01 * seed
                        rows.append({"run_id": f"{model}-{seed}-{family}-{component}-{method}-{layer}-{positions}",
                                     "model": model, "kind": "ablation", "seed": seed, "family": family,
                                     "component": component, "method": method, "layer": layer,
                                     "kl": value + (0.05 if family == "copying" else 0.0), "accuracy_clean": 1.0,
                                     **({"positions": positions} if positions else {})})
    return rows


def record(kind: str, rows: list[dict], name: str = "sw") -> SweepRecord:
    frame = pd.DataFrame(rows)
    counts = {m: LAYERS[m] for m in frame["model"].unique()}
    first = str(frame["model"].iloc[0])
    axes = [c for c in ("seed", "family", "component", "method", "layer", "positions", "strength", "vector_type",
                        "skip") if c in frame]
    return SweepRecord(name, kind, first, counts[first], frame, pd.DataFrame(), axes, layer_counts=counts)


def two_models(deep: dict = DEEP) -> SweepRecord:
    return record("ablation", ablation_rows("tiny-b", deep) + ablation_rows("tiny-z", SHALLOW))


def test_by_model_splits_the_runs_and_orders_models_by_layer_count():
    both = two_models()
    assert both.models == ["tiny-z", "tiny-b"]  # by layer count, not name or frame order
    parts = both.by_model()
    assert [(p.model, p.n_layers, p.name, p.kind) for p in parts] == [("tiny-z", 4, "sw", "ablation"),
                                                                       ("tiny-b", 8, "sw", "ablation")]
    for part in parts:
        assert set(part.frame["model"]) == {part.model}
        assert len(part.frame) == (both.frame["model"] == part.model).sum()
        assert part.axes == both.axes and "model" not in part.axes
    one = parts[0]
    assert one.by_model() == [one] and one.by_model()[0] is one


def test_the_hub_of_each_model_is_the_one_recomputed_by_hand():
    both = two_models()
    placed = [scale.place(r, r.model) for r in both.by_model()]
    for p in placed:
        rows = both.frame[(both.frame["model"] == p.label) & (both.frame["component"] == "layer")
                          & (both.frame["method"] == "mean")]
        per_seed = rows.groupby(["seed", "layer"])["kl"].mean().unstack().idxmax(axis=1)
        assert p.mode == per_seed.mode().min() and p.depths == {s: h / LAYERS[p.label] for s, h in per_seed.items()}
    table = scale.scale_table(placed)
    assert table[["model", "n_layers", "hub", "depth"]].values.tolist() == [["tiny-z", 4, "L1", 0.25],
                                                                            ["tiny-b", 8, "L5", 0.62]]


@pytest.mark.parametrize("deep,word", [(DEEP, "deeper"), ({**DEEP, "layer": [9.0, *DEEP["layer"][1:5], 1.0, 1.0, 0.5]},
                                                           "shallower")])
def test_the_move_card_says_which_way_the_hub_moves_with_depth(deep, word):
    cards = scale.scale_section(two_models(deep)).cards
    moved = next(c for c in cards if "sits" in c.claim)
    assert moved.claim.startswith(f"The hub sits {word} in tiny-b: depth")
    assert moved.claim.endswith("in tiny-z.") and moved.control == "tiny-z's depths, per seed"
    assert moved.extra["depth_a"] == pytest.approx(0.25)
    assert moved.grade == "A" and moved.agree == "3 of 3 seeds"


def test_the_top_mlp_card_names_the_model_that_breaks_it():
    cards = scale.scale_section(two_models()).cards
    mlp = next(c for c in cards if "MLP" in c.claim)
    assert mlp.claim.startswith("L0's MLP is the top MLP (mlp/mean) in every model.") and mlp.grade == "A"
    broken = {**DEEP, "mlp": [0.1, 0.2, 0.2, 4.0, 0.1, 0.1, 0.1, 0.1]}
    mlp = next(c for c in scale.scale_section(two_models(broken)).cards if "MLP" in c.claim)
    assert "in tiny-z but not in tiny-b (its top MLP: L3)" in mlp.claim and mlp.extra["broken"] == {"tiny-b": 3}
    assert mlp.agree == "3 of 3 seeds" and mlp.mean == pytest.approx(5.0 + 0.01 + 0.025)  # tiny-z's L0 alone


def test_cards_name_the_positions_variant_they_are_about():
    last = {**DEEP, "layer": [0.5, 9.0, 1.5, 2.0, 2.5, 1.0, 1.0, 0.5]}  # tiny-b's hub L1: depth 0.125
    rows = [r for pos, deep in (("all", DEEP), ("last", last))
            for r in ablation_rows("tiny-b", deep, positions=pos) + ablation_rows("tiny-z", SHALLOW, positions=pos)]
    built = scale.scale_section(record("ablation", rows))
    assert [s.id for s in built.figures] == ["scale_depth_positions_all", "scale_table_positions_all",
                                             "scale_depth_positions_last", "scale_table_positions_last"]
    moved = [c for c in built.cards if "sits" in c.claim]
    assert [c.claim.endswith(f"(positions {p}).") for c, p in zip(moved, ("all", "last"))] == [True, True]
    assert "deeper" in moved[0].claim and "shallower" in moved[1].claim
    # the sweep-end view names each variant as printed (Rich would take "[last]" for a style tag and drop it)
    from rich.console import Console

    console = Console(record=True, width=200, file=open(os.devnull, "w"))
    for view in SECTIONS.get("ablation").summary(record("ablation", rows).frame).views:
        console.print(view)
    assert "mean[last]" in console.export_text()


def test_the_sweep_end_summary_has_one_hub_table_per_model():
    both = two_models()
    summary = SECTIONS.get("ablation").summary(both.frame)
    for model in ("tiny-z", "tiny-b"):
        alone = ablation_summary(both.frame[both.frame["model"] == model].reset_index(drop=True))
        for name, table in alone.tables.items():
            mine = summary.tables[name][summary.tables[name]["model"] == model].drop(columns="model")
            pd.testing.assert_frame_equal(mine.reset_index(drop=True), table)
        assert {f"{model}/{k}": v for k, v in alone.metrics.items()}.items() <= summary.metrics.items()
    assert "hub_layer_mode" not in summary.metrics and summary.metrics["tiny-b/hub_layer_mode"] == 5
    assert [v.title.split(":")[0] for v in summary.views] == ["tiny-b", "tiny-b", "tiny-z", "tiny-z"]
    one = both.by_model()[0].frame
    assert "hub_layer_mode" in SECTIONS.get("ablation").summary(one).metrics  # one model: as before


def _compare(monkeypatch, tmp_path, a: SweepRecord, b: SweepRecord):
    monkeypatch.setattr(compare, "read", lambda uri, name, argument: {a.name: a, b.name: b}[name])
    return compare.write_compare("sqlite:///unused", a.name, b.name, tmp_path)


def test_compare_caps_the_move_at_C_and_names_what_differs(monkeypatch, tmp_path):
    a = record("ablation", ablation_rows("tiny-z", SHALLOW), "a")
    b = record("ablation", ablation_rows("tiny-b", DEEP), "b")
    moved = next(c for c in _compare(monkeypatch, tmp_path, a, b).cards if "sits" in c.claim)
    assert moved.grade == "A"  # same settings: the evidence grades it
    b = record("ablation", ablation_rows("tiny-b", DEEP, families=("antonyms",)), "b")
    moved = next(c for c in _compare(monkeypatch, tmp_path, a, b).cards if "sits" in c.claim)
    assert moved.grade == "C" and moved.why.startswith("capped at C: the sweeps differ in family (the evidence")
    assert "the sweeps differ in family (a: antonyms, copying; b: antonyms)" in moved.caveats
    with pytest.raises(AtlasError, match=r"^SWEEP_A: 'sw' holds runs of 2 models \(tiny-z, tiny-b\)"):
        _compare(monkeypatch, tmp_path, two_models(), b)


def steering_rows(model: str, best: int) -> list[dict]:
    n = LAYERS[model]
    return [{"run_id": f"{model}-{v}-{layer}-{seed}", "model": model, "kind": "steering", "seed": seed,
             "family": "antonyms", "layer": layer, "strength": 1.0, "vector_type": v,
             "ld_delta": (3.0 if v == "mean_diff" and layer == best else 0.5) + 0.02 * seed, "kl": 0.1}
            for v in ("mean_diff", "random") for layer in range(n) for seed in range(3)]


def test_a_steering_peak_is_never_called_a_hub(monkeypatch, tmp_path):
    a = record("steering", steering_rows("tiny-z", 1), "a")
    b = record("steering", steering_rows("tiny-b", 6), "b")
    made = _compare(monkeypatch, tmp_path, a, b)
    built = scale.scale_section(record("steering", steering_rows("tiny-z", 1) + steering_rows("tiny-b", 6)))
    assert list(scale.scale_table([scale.place(r, r.model) for r in (a, b)]))[2] == "peak"
    for cards, figure in ((made.cards, made.figures[0]), (built.cards, built.figures[0])):
        assert cards and not any("hub" in c.claim.lower() for c in cards)
        marks = [t.get_text() for ax in figure.figure.axes for t in ax.texts]
        assert marks and all(t.startswith("peak ") for t in marks)
        assert "hub" not in figure.caption
    assert next(c for c in built.cards if "sits" in c.claim).claim.startswith("The most steerable layer sits deeper")


def skip_rows(model: str, top5: float) -> list[dict]:
    return [{"run_id": f"{model}-{layer}-{seed}", "model": model, "kind": "skip", "seed": seed, "family": "antonyms",
             "skip": json.dumps([layer]), "kl": 1.0 + (layer == 1) + 0.01 * seed, "top1_agreement": 0.2,
             "top5_overlap": top5 - 0.05 * layer + 0.01 * seed} for layer in range(LAYERS[model]) for seed in range(3)]


def test_the_skip_card_says_whether_any_model_keeps_top5_overlap():
    none = scale.scale_section(record("skip", skip_rows("tiny-z", 0.3) + skip_rows("tiny-b", 0.4))).cards
    card = next(c for c in none if "top-5" in c.claim)
    assert card.claim.startswith("No single-layer skip keeps top-5 overlap ≥ 0.5 with the full model in any model")
    assert "the best is 0.41 (tiny-b, skipping L0)" in card.claim and card.grade == "A"
    some = scale.scale_section(record("skip", skip_rows("tiny-z", 0.3) + skip_rows("tiny-b", 0.9))).cards
    card = next(c for c in some if "top-5" in c.claim)
    assert card.claim.startswith("A single-layer skip keeps top-5 overlap ≥ 0.5 with the full model in tiny-b:")
    assert (card.grade, card.agree, card.mean) == ("A", "3 of 3 seeds", pytest.approx(0.91))


def exit_rows(model: str, top1: float) -> list[dict]:
    """Early exit at every layer; the last layer (the full model) agrees fully and must not count."""
    n = LAYERS[model]
    return [{"run_id": f"{model}-{layer}-{seed}", "model": model, "kind": "early_exit", "seed": seed,
             "family": "antonyms", "exit_layer": layer, "kl": 5.0 - layer, "top5_overlap": 0.3,
             "top1_agreement": 1.0 if layer == n - 1 else top1 + 0.05 * layer / n + 0.01 * seed}
            for layer in range(n) for seed in range(3)]


def test_the_exit_card_leaves_out_the_last_layer_and_says_whether_any_early_exit_agrees():
    none = scale.scale_section(record("early_exit", exit_rows("tiny-z", 0.1) + exit_rows("tiny-b", 0.2))).cards
    card = next(c for c in none if "top-1" in c.claim)
    assert card.claim.startswith("No early exit before the last layer keeps top-1 agreement ≥ 0.5 with the full "
                                 "model in any model: the best is 0.25 (tiny-b, exiting after L6)")
    assert card.grade == "A"
    some = scale.scale_section(record("early_exit", exit_rows("tiny-z", 0.6) + exit_rows("tiny-b", 0.2))).cards
    card = next(c for c in some if "top-1" in c.claim)
    assert card.claim.startswith("An early exit before the last layer keeps top-1 agreement ≥ 0.5 with the full model "
                                 "in tiny-z")


def test_a_report_of_two_models_namespaces_each_models_section(monkeypatch, tmp_path):
    import orchestrator.report as report

    monkeypatch.setattr(report, "read", lambda uri, name: two_models())
    made = report.write_report("sqlite:///unused", "sw", tmp_path, log=False)
    ids = [s.id for s in made.figures]
    assert ids[:2] == ["scale_depth", "scale_table"] and len(ids) == len(set(ids))
    assert {"tiny-z_ablation_profiles", "tiny-b_ablation_profiles"} <= set(ids)
    assert {c.figure for c in made.cards} <= set(ids)
    cross = [c for c in made.cards if not c.claim.startswith("tiny-")]
    assert made.cards[:len(cross)] == cross and any(c.claim.startswith("tiny-b: layer/mean: L5 is the hub")
                                                   for c in made.cards)
    page = made.html.read_text()
    assert "tiny-z (4 layers), tiny-b (8 layers)" in page


def test_the_move_card_never_prints_two_equal_depths():
    from types import SimpleNamespace

    def placed(label, depths):
        return SimpleNamespace(label=label, depths=depths, profile=SimpleNamespace(marker="the best early exit"))

    card = scale.moved_card(placed("a", {0: 0.9286, 1: 0.9286}), placed("b", {0: 0.9333, 1: 0.9333}), "fig")
    assert "depth 0.933 against 0.929 in a." in card.claim
    card = scale.moved_card(placed("a", {0: 0.25, 1: 0.25}), placed("b", {0: 0.5, 1: 0.5}), "fig")
    assert "depth 0.50 against 0.25 in a." in card.claim
