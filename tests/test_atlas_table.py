"""The key-metrics rows (orchestrator/report/atlas_table.py) on hand-built records whose answers are known by
construction, the research figures and rules (research.py), and the rows' definitions in docs/kinds.md."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from orchestrator.report import atlas_table as at
from orchestrator.report import research
from orchestrator.report.record import SweepRecord
from tests.conftest import REPO

FAMILIES = ("f0", "f1")


def _record(kind: str, rows: list[dict], n_layers: int = 4, model: str = "m") -> SweepRecord:
    frame = pd.DataFrame(rows)
    return SweepRecord("r", kind, model, n_layers, frame, pd.DataFrame(), axes=[c for c in frame if c != "kl"])


def _value(name: str, record: SweepRecord) -> dict:
    return at.ROWS.get(name).value(record).to_dict()


# ablation: the hub is the layer with the largest family-mean KL of `layer`/`mean`; seed s puts it at layer s + 1
HUB_KL = {0: [1.0, 5.0, 2.0, 0.5], 1: [1.0, 2.0, 6.0, 0.5]}
MLP_KL = {0: [3.0, 1.0, 1.0, 1.0], 1: [1.0, 1.0, 1.0, 4.0]}


def _ablation(model: str = "m") -> SweepRecord:
    rows = []
    for seed in (0, 1):
        for family in FAMILIES:
            shift = 0.5 if family == "f0" else -0.5  # the family mean is the profile itself
            for layer in range(4):
                rows.append({"seed": seed, "family": family, "component": "layer", "method": "mean", "layer": layer,
                             "kl": HUB_KL[seed][layer] + shift})
                rows.append({"seed": seed, "family": family, "component": "layer", "method": "zero", "layer": layer,
                             "kl": 50.0 if layer == 3 else 0.0})  # another method: not the hub's
                rows.append({"seed": seed, "family": family, "component": "mlp", "method": "mean", "layer": layer,
                             "kl": MLP_KL[seed][layer] + shift})
    return _record("ablation", rows, model=model)


def test_hub_rows_read_the_layer_with_the_largest_family_mean_kl_of_the_mean_method():
    rec = _ablation()
    assert _value("hub layer", rec) == {0: 1.0, 1: 2.0}
    assert _value("hub depth", rec) == {0: 0.25, 1: 0.5}
    assert _value("hub max KL", rec) == {0: 5.0, 1: 6.0}
    assert _value("MLP max effect", rec) == {0: 3.0, 1: 4.0}
    hub = at.cell(at.ROWS.get("hub layer"), rec, "r", "#", "hub layer")
    assert hub.grade == "C" and hub.why  # the seeds give different hubs: no mode holds in most of them


def _head_rows(seed: int, tops: dict[str, list[tuple[int, int]]], extra: float = 0.0) -> list[dict]:
    """Head trials at layers 0-1, heads 0-3: each family's listed heads get KL 1.0, 0.9, 0.8 (in that order), every
    other head 0.01 * its index."""
    rows = []
    for family, top in tops.items():
        for layer in (0, 1):
            for head in range(4):
                kl = 0.01 * (4 * layer + head)
                if (layer, head) in top:
                    kl = 1.0 - 0.1 * top.index((layer, head)) + extra
                rows.append({"seed": seed, "family": family, "component": "head", "method": "mean", "layer": layer,
                             "head": head, "kl": kl})
                rows.append({"seed": seed, "family": family, "component": "head", "method": "zero", "layer": layer,
                             "head": head, "kl": 5.0 if (layer, head) == (1, 3) else 0.0})  # not the coverage's
    return rows


CROSS = {"f0": [(0, 3), (1, 0), (1, 1)], "f1": [(0, 3), (1, 0), (0, 0)], "f2": [(0, 3), (0, 1), (0, 2)]}  # L0 H3: 3
OTHER = {"f0": [(1, 0), (1, 1), (1, 2)], "f1": [(1, 0), (0, 0), (0, 1)], "f2": [(1, 0), (0, 3), (0, 2)]}  # L1 H0: 3


def test_head_max_is_the_largest_family_mean_head_kl_over_heads_and_methods():
    rec = _record("ablation", _head_rows(0, CROSS) + _head_rows(1, CROSS, extra=0.5))
    # L1 H3 under `zero`: 5.0 in every family; under `mean`, L0 H3's family mean 1.0 (+ 0.5 in seed 1) is smaller
    assert _value("head max effect", rec) == {0: 5.0, 1: 5.0}
    no_zero = rec.frame[rec.frame["method"] == "mean"]
    assert _value("head max effect", _record("ablation", no_zero.to_dict("records"))) == {0: 1.0, 1: 1.5}
    assert _value("head max effect", _ablation()) == {}  # no head trials: no value


def test_head_family_coverage_names_the_head_in_most_families_top_three():
    rec = _record("ablation", _head_rows(0, CROSS) + _head_rows(1, CROSS) + _head_rows(2, OTHER))
    # seeds 0 and 1: L0 H3 tops f0, f1, f2; seed 2: L1 H0 covers all three, L0 H3 only f2 -> the mode is L0 H3
    assert _value("head family coverage", rec) == {0: 3.0, 1: 3.0, 2: 1.0}
    got = at.cell(at.ROWS.get("head family coverage"), rec, "r", "#", "head family coverage")
    assert got.label == "L0 H3: 2.33 of 3 families" and got.text.startswith("L0 H3: 2.33 of 3 families; 2.33 ± ")
    assert got.grade == "B"  # seeds 0 and 1 reach CROSS_TASK, seed 2 does not: most agree, no control
    lonely = {"f0": [(0, 0), (0, 1), (0, 2)], "f1": [(0, 3), (1, 0), (1, 1)], "f2": [(1, 2), (1, 3), (0, 1)]}
    rec = _record("ablation", _head_rows(0, lonely) + _head_rows(1, lonely))
    assert _value("head family coverage", rec) == {0: 2.0, 1: 2.0}  # L0 H1 alone is in two tops (f0's and f2's)
    # two families with disjoint tops: every top head covers one; the tie goes to the larger KL averaged over
    # families: L0 H3 (1.0 in f1, 0.03 in f0) over L0 H0 (1.0 in f0, 0.0 in f1)
    rec = _record("ablation", _head_rows(0, {k: v for k, v in lonely.items() if k != "f2"}))
    assert _value("head family coverage", rec) == {0: 1.0}
    alone = at.cell(at.ROWS.get("head family coverage"), rec, "r", "#")
    assert alone.label == "L0 H3: 1 of 2 families" and alone.grade == "C"  # one seed, below CROSS_TASK


def _steering() -> SweepRecord:
    rows = []
    for seed in (0, 1):
        for family, shift in (("f0", 0.5), ("f1", -0.5)):
            for layer in ("0", "1"):
                for strength in (-2.0, 1.0, 2.0):
                    for vt in ("mean_diff", "pca", "random"):
                        if vt == "random":
                            ld = 30.0  # the control: never a boost
                        elif strength < 0:
                            ld = 20.0  # a knock-out: never a boost
                        else:  # the best: pca at layer 1, strength 2: 2 * (seed + 1) + 1
                            ld = strength * (seed + 1) + (1.0 if (vt, layer) == ("pca", "1") else 0.0)
                        sel = {"selectivity": (3.0 + seed if (vt, layer) == ("mean_diff", "0") else 1.0)
                               + (0.5 if family == "f0" else -0.5)} if strength < 0 else {}
                        if vt == "random" and strength < 0:
                            sel = {"selectivity": 99.0}  # the control's selectivity: not read
                        rows.append({"seed": seed, "family": family, "layer": layer, "strength": strength,
                                     "vector_type": vt, "ld_delta": ld + shift, **sel})
            for strength, ld in ((1.0, -4.0 * (seed + 1)), (2.0, 3.0 * (seed + 1)), (-1.0, 90.0)):
                rows.append({"seed": seed, "family": family, "layer": "[0, 1]", "strength": strength,
                             "vector_type": "mean_diff", "ld_delta": ld + shift})
            rows.append({"seed": seed, "family": family, "layer": "[0, 1]", "strength": 1.0, "vector_type": "random",
                         "ld_delta": 80.0})
    rows.append({"seed": 1, "family": "f0", "layer": "0", "strength": -2.0, "vector_type": "pca",
                 "ld_delta": 0.0, "selectivity": math.nan})  # an undefined selectivity (one more run) is left out
    return _record("steering", rows)


def test_best_boost_ignores_random_vectors_negative_strengths_and_layer_sets():
    assert _value("best steering boost", _steering()) == {0: 3.0, 1: 5.0}


def test_multi_layer_reads_layer_set_cells_only_and_keeps_the_sign():
    # the set's cells at positive strengths: -4 (s+1) and +3 (s+1): the larger magnitude is the negative one
    assert _value("multi-layer steering", _steering()) == {0: -4.0, 1: -8.0}
    singles = _steering().frame
    singles = singles[~singles["layer"].str.contains(",")]
    assert _value("multi-layer steering", _record("steering", singles.to_dict("records"))) == {}


def test_knockout_selectivity_is_the_best_family_mean_of_a_non_random_vector_at_a_negative_strength():
    assert _value("knockout selectivity", _steering()) == {0: 3.0, 1: 4.0}


def test_layer_skipping_reads_single_layer_skips_only():
    rows = []
    for seed in (0, 1):
        for family, shift in (("f0", 0.1), ("f1", -0.1)):
            for skip, overlap in (("[]", 1.0), ("[0]", 0.2), ("[1]", 0.4 + 0.2 * seed), ("[2]", 0.3),
                                  ("[1, 2]", 0.9)):
                rows.append({"seed": seed, "family": family, "skip": skip, "top5_overlap": overlap + shift})
    assert _value("layer skipping", _record("skip", rows)) == pytest.approx({0: 0.4, 1: 0.6})


def test_early_exit_is_the_first_layer_whose_family_mean_top1_reaches_keep():
    top1 = {0: {"f0": [0.0, 0.9, 0.4, 1.0], "f1": [0.9, 0.2, 0.8, 1.0]},  # family means 0.45, 0.55: L1
            1: {"f0": [0.0, 0.0, 0.6, 1.0], "f1": [0.0, 0.0, 0.4, 1.0]},  # L2 (0.5 is enough)
            2: {"f0": [0.0, 0.0, 0.0, 0.4], "f1": [0.0, 0.0, 0.0, 0.4]}}  # none: nan
    rows = [{"seed": s, "family": f, "exit_layer": layer, "top1_agreement": v}
            for s, by in top1.items() for f, values in by.items() for layer, v in enumerate(values)]
    rec = _record("early_exit", rows)
    got = at.ROWS.get("early exit").value(rec)
    assert got[0] == 0.25 and got[1] == 0.5 and math.isnan(got[2])
    made = at.cell(at.ROWS.get("early exit"), rec, "r", "#", "early exit")
    assert made.values.to_dict() == {0: 0.25, 1: 0.5}  # the nan seed is left out of the cell
    assert made.grade == "C"  # two seeds, two layers: the mode (0.25) holds in one


RECOVERY = {0: [0.95, 0.5, 0.91, 0.92, 1.0],  # L0 spikes, L1 breaks it: the zone starts at L2
            1: [0.2, 0.3, 0.95, 0.85, 1.0],  # L3 breaks it: L4
            2: [0.9, 0.95, 0.99, 0.8, 0.85]}  # the deepest layer misses 0.9: no zone


def test_transfer_zone_is_the_shallowest_depth_from_which_every_deeper_layer_recovers():
    rows = [{"seed": s, "family": f, "layer": layer, "rank": 8, "recovery": v + (0.05 if f == "f0" else -0.05)}
            for s, values in RECOVERY.items() for f in FAMILIES for layer, v in enumerate(values)]
    rows += [{"seed": 0, "family": f, "layer": 1, "rank": 4, "recovery": 0.5} for f in FAMILIES]  # another rank
    rows += [{"seed": 1, "family": f, "layer": 5, "rank": 8, "recovery": math.nan} for f in FAMILIES]  # no LD gap
    rows += [{"seed": 3, "family": f, "layer": 4, "rank": 8, "recovery": math.nan} for f in FAMILIES]  # none at all
    got = at.ROWS.get("cross-model transfer zone").value(_record("cross_model_patch", rows, n_layers=6))
    assert got[0] == 2 / 6 and got[1] == 4 / 6 and math.isnan(got[2])  # seed 1's L5 does not break its zone
    assert 3 not in got.index  # a seed with no defined recovery has no zone (not "every layer recovers")
    rows += [{"seed": 0, "family": f, "layer": 1, "rank": 16, "recovery": 3.5} for f in FAMILIES]  # rank mean: 1.5
    got = at.ROWS.get("cross-model transfer zone").value(_record("cross_model_patch", rows, n_layers=6))
    assert got[0] == 0.0  # L1's mean over ranks (0.5, 0.5, 3.5) is 1.5: every layer recovers


def test_norm_effect_correlation_is_the_seed_mean_of_the_norm_effect_spearman():
    rows = [{"seed": 0, "family": "f0", "operation": "norm_effect", "spearman": 0.8},
            {"seed": 0, "family": "f1", "operation": "norm_effect", "spearman": 0.4},
            {"seed": 0, "family": "f0", "operation": "layer_ablation", "layer": 1, "kl": 2.0},
            {"seed": 1, "family": "f0", "operation": "norm_effect", "spearman": -0.2},
            {"seed": 1, "family": "f1", "operation": "norm_effect", "spearman": math.nan},  # constant norms
            {"seed": 2, "family": "f0", "operation": "norm_profile", "norm_total": 3.0}]
    got = _value("adapter norm-effect correlation", _record("adapter", rows))
    assert got == pytest.approx({0: 0.6, 1: -0.2}) and set(got) == {0, 1}  # seed 2 has no norm_effect run
    assert _value("adapter norm-effect correlation", _record("adapter", rows[2:3])) == {}


def test_rules_hold_as_the_docs_state():
    fig = research.Figure(0.5, "")
    assert research.near(0.1).holds(0.6, fig) and research.near(0.1).holds(0.4, fig)
    assert not research.near(0.1).holds(0.61, fig) and not research.near(0).holds(0.51, fig)
    bound = research.Figure(0.5, "", upper=True)  # "0.5 or shallower": anything up to 0.6
    assert research.near(0.1).holds(0.0, bound) and not research.near(0.1).holds(0.61, bound)
    assert research.factor(2).holds(1.0, fig) and research.factor(2).holds(0.25, fig)
    assert not research.factor(2).holds(0.24, fig) and not research.factor(2).holds(-0.5, fig)
    assert research.factor(2).holds(-5.0, research.Figure(-7.2, "")) and not research.factor(2).holds(-0.5, bound)
    assert research.side(1).holds(2.0, research.Figure(11654, ""))
    assert not research.side(1).holds(0.5, research.Figure(3.0, ""))
    assert research.at_least(2).holds(2.0, fig) and not research.at_least(2).holds(1.0, fig)


def test_every_figure_names_a_row_with_a_rule_and_a_size():
    names = research.FIGURES.names()
    assert names and all(re.fullmatch(r"(.+) @ (0\.5B|1\.5B|3B)", n) for n in names)
    for name in names:
        row = name.split(" @ ")[0]
        assert row in at.ROWS and at.ROWS.get(row).rule is not None, row
    assert set(research.OURS) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert research.figure("hub layer", "qwen2.5-coder-1.5b").value == 14
    assert research.figure("hub layer", "smollm2-135m") is None
    assert research.figure("head family coverage", "qwen2.5-coder-0.5b") is None  # a figure at 1.5B only


def _hubs(model: str, hubs: dict[int, int]) -> SweepRecord:
    rows = [{"seed": s, "family": f, "component": "layer", "method": "mean", "layer": layer,
             "kl": 9.0 if layer == hub else 1.0} for s, hub in hubs.items() for f in FAMILIES for layer in range(24)]
    return _record("ablation", rows, n_layers=24, model=model)


def test_the_cell_says_whether_it_reproduces_the_research_with_the_verdicts_grade():
    row = at.ROWS.get("hub layer")
    same = at.cell(row, _hubs("qwen2.5-coder-0.5b", {0: 2, 1: 2}), "r", "#", "hub layer")
    assert same.research == "research: L2; reproduces (grade B)"
    other = at.cell(row, _hubs("qwen2.5-coder-0.5b", {0: 0, 1: 0}), "r", "#", "hub layer")
    assert other.research == "research: L2; does not reproduce (grade B)"
    split = at.cell(row, _hubs("qwen2.5-coder-0.5b", {0: 2, 1: 0}), "r", "#", "hub layer")
    assert split.research == "research: L2; does not reproduce (grade C)"  # the mode L0; seed 0 says otherwise
    depth = at.cell(at.ROWS.get("hub depth"), _hubs("qwen2.5-coder-1.5b", {0: 12, 1: 12}), "r", "#", "hub depth")
    assert depth.research.endswith("; reproduces (grade B)")  # 12/24 = 0.5 against 14/28 = 0.5
    assert at.cell(row, _hubs("smollm2-135m", {0: 2, 1: 2}), "r", "#", "hub layer").research == \
        "no research figure at this size"
    kl = at.cell(at.ROWS.get("hub max KL"), _hubs("qwen2.5-coder-0.5b", {0: 2, 1: 2}), "r", "#", "hub max KL")
    assert kl.research == "research: 19.11 (L2); does not reproduce (grade B)"  # 9 < 19.11 / 2


def test_the_table_prints_the_rule_and_the_research_beside_the_cell():
    rec = _hubs("qwen2.5-coder-0.5b", {0: 2, 1: 2})
    cells = at.table([("st.hubs", rec, "#u")], ["qwen2.5-coder-0.5b"])
    page = at.table_html(cells, ["qwen2.5-coder-0.5b"])
    assert "reproduces when: the same layer" in page and "research: L2; reproduces (grade B)" in page
    assert cells["adapter norm-effect correlation"]["qwen2.5-coder-0.5b"] == \
        "not measured: no adapter member in the study"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_row_is_defined_in_docs_kinds_with_its_function_and_oracle_test():
    docs = _section((REPO / "docs" / "kinds.md").read_text(encoding="utf-8"), "Key-metrics rows")
    tests = set(re.findall(r"^def (test_\w+)", (REPO / "tests" / "test_atlas_table.py").read_text(), re.M))
    entries = re.split(r"\n- (?=\*\*)", docs)
    by_name = {re.match(r"\*\*(.+?)\*\*", e).group(1): e for e in entries[1:]}
    assert sorted(at.ORDER) == at.ROWS.names() and list(by_name) == at.ORDER  # an entry per row, in table order
    for name, entry in by_name.items():
        assert f"`{at.ROWS.get(name).value.__name__}`" in entry, name
        named = re.findall(r"`(test_\w+)`", entry)
        assert named and set(named) <= tests, name


def test_the_rows_grade_a_value_row_by_the_sign_of_its_seeds():
    rec = _record("adapter", [{"seed": s, "family": "f0", "operation": "norm_effect", "spearman": v}
                              for s, v in ((0, 0.5), (1, 0.7), (2, -0.1))])
    got = at.cell(at.ROWS.get("adapter norm-effect correlation"), rec, "r", "#")
    assert got.grade == "B" and got.text == f"0.367 ± {np.std([0.5, 0.7, -0.1], ddof=1):.2g}"


def test_a_heads_only_ablation_member_has_no_layer_profile_to_place():
    """The study page puts every ablation member's models on one depth axis (scale.place): a member of head trials
    only (the atlas' `heads`) has no hub to mark there, and is left out instead of breaking the page."""
    from orchestrator.report.scale import place

    record = _record("ablation", _head_rows(0, {"copying": [(0, 1)]}) + _head_rows(1, {"copying": [(1, 2)]}))
    assert place(record, "m") is None
    assert place(_ablation(), "m").mode in (1, 2)  # a layer member is still placed
