"""Layer axes by depth (issue 18 item 2): `all`, `{every: k}`, `{depth: [...]}` resolved against the spec's model."""
from __future__ import annotations

import re

import pytest

from interventions.kinds import run_kind
from interventions.layers import at_depth, depth, expand, resolve_axis
from interventions.models import EMBEDDED
from orchestrator.grid import expand as expand_grid
from orchestrator.spec import load_sweep
from tests.conftest import bad_input, context, spec


@pytest.mark.parametrize("n_layers,fractions,want", [
    (30, [0.1, 0.5, 0.9], [3, 15, 27]),
    (24, [0.1, 0.5, 0.9], [2, 12, 22]),  # 2.4 -> 2, 21.6 -> 22
    (18, [0.1, 0.5, 0.9], [2, 9, 16]),  # 1.8 -> 2, 16.2 -> 16
    (4, [0.0, 0.1, 0.5, 0.9, 1.0], [0, 2, 3]),  # 0.4 -> 0 (merged), 3.6 -> 4 -> clamped to 3, 1.0 -> 3 (merged)
    (4, [0.125, 0.375], [0, 1]),  # halves round down: 0.5 -> 0, 1.5 -> 1
    (1, [0.0, 0.5, 1.0], [0]),
])
def test_depth_is_the_nearest_layer_clamped_and_merged(n_layers, fractions, want):
    assert expand({"depth": fractions}, n_layers) == want
    assert all(0 <= at_depth(x, n_layers) < n_layers for x in fractions)


def test_all_every_and_top_level_versus_set_resolution():
    assert expand("all", 5) == [0, 1, 2, 3, 4]
    assert expand({"every": 2}, 5) == [0, 2, 4] and expand({"every": 9}, 5) == [0]
    assert resolve_axis([4, {"every": 2}, {"depth": [0.5]}], 6) == [4, 0, 2, 3]  # order kept, duplicates merged
    # steering's layer sets: an integer set is kept; a set with a symbolic item gets its layers (sorted, merged)
    assert resolve_axis([[6, 21], 14, [{"depth": [0.25, 0.75]}, 3]], 24) == [[6, 21], 14, [3, 6, 18]]
    # skip: a symbolic item at the top level is one single-layer set per layer; inside a set, one set
    assert resolve_axis([[], "all", [{"every": 2}]], 4, sets_only=True) == [[], [0], [1], [2], [3], [0, 2]]


def test_depth_of_a_point():
    assert depth(3, 4) == 0.75 and depth([6, 21], 24) == pytest.approx(13.5 / 24)


ABLATION = spec("ablation", component=["layer"], layer={"depth": [0.1, 0.5, 0.9]}, method=["zero"])


def test_spec_resolves_depths_on_the_model_and_ids_equal_the_explicit_layers(tmp_path):
    (tmp_path / "a.yaml").write_text(ABLATION)
    (tmp_path / "b.yaml").write_text(spec("ablation", component=["layer"], layer=[0, 2, 3], method=["zero"]))
    a, b = load_sweep(tmp_path / "a.yaml"), load_sweep(tmp_path / "b.yaml")
    assert a.axes["layer"] == [0, 2, 3]  # 4 layers: 0.4 -> 0, 2.0 -> 2, 3.6 -> 4 clamped to 3
    assert [p.trial_id for p in expand_grid(a)] == [p.trial_id for p in expand_grid(b)]


@pytest.mark.parametrize("kind,axes,name,want", [
    ("early_exit", {"exit_layer": "all"}, "exit_layer", [0, 1, 2, 3]),
    ("early_exit", {"exit_layer": [{"every": 3}]}, "exit_layer", [0, 3]),
    ("skip", {"skip": [[], {"depth": [0.5, 0.9]}, [0, {"every": 2}]]}, "skip", [[], [2], [3], [0, 2]]),
    ("cross_model_patch", {"layer": {"depth": [0.9, 1.0]}, "rank": [2], "steps": [3]}, "layer", [3]),
    ("steering", {"layer": [[1, 3], {"depth": [0.5]}, [{"depth": [0.25, 0.75]}]], "strength": [1.0],
                  "vector_type": ["mean_diff"]}, "layer", [[1, 3], 2]),  # the depth set is [1, 3] again: merged
])
def test_every_layer_axis_resolves(tmp_path, kind, axes, name, want):
    (tmp_path / "s.yaml").write_text(spec(kind, **axes))
    assert load_sweep(tmp_path / "s.yaml").axes[name] == want


def test_depth_is_logged_beside_the_layer_on_the_tiny_model(tiny_llama):
    ctx = context(tiny_llama, n_train=4, n_eval=3)
    assert run_kind("ablation", ctx, {"component": "mlp", "layer": 1, "method": "zero"}).metrics["depth"] == 0.25
    assert run_kind("early_exit", ctx, {"exit_layer": 3}).metrics["depth"] == 0.75
    assert run_kind("skip", ctx, {"skip": [1, 2]}).metrics["depth"] == pytest.approx(1.5 / 4)
    assert "depth" not in run_kind("skip", ctx, {"skip": []}).metrics  # no layer skipped: no depth


def test_depths_on_the_embedded_models_30_layers(tmp_path):
    text = spec("ablation", model=EMBEDDED, component=["layer"], layer={"depth": [0.1, 0.5, 0.9]}, method=["zero"])
    (tmp_path / "s.yaml").write_text(text)
    assert load_sweep(tmp_path / "s.yaml").axes["layer"] == [3, 15, 27]


BAD = [
    ("every 0", spec("early_exit", exit_layer=[{"every": 0}]), "axes.exit_layer.0", "every: 0 must be an integer"),
    ("depth above 1", spec("ablation", component=["layer"], layer={"depth": [0.5, 1.5]}, method=["zero"]),
     "axes.layer.0", "depth: 1.5 is not a fraction in [0, 1]"),
    ("empty depth", spec("early_exit", exit_layer={"depth": []}), "axes.exit_layer.0", "needs at least one fraction"),
    ("unknown form", spec("early_exit", exit_layer=[{"fraction": [0.5]}]), "axes.exit_layer.0",
     "unknown layer form 'fraction'"),
    ("a word", spec("early_exit", exit_layer=["last"]), "axes.exit_layer.0", "a layer is an integer"),
    ("a set where sets are not", spec("early_exit", exit_layer=[[1, 2]]), "axes.exit_layer.0", "not a list"),
    ("index past a symbolic item", spec("early_exit", exit_layer=["all", 4]), "axes.exit_layer.1",
     "layer 4 is outside 0..3"),
    ("skip: bad depth in a set", spec("skip", skip=[[1, {"depth": ["half"]}]]), "axes.skip.0",
     "depth: 'half' is not a fraction"),
    ("skip: an index at the top level", spec("skip", skip=[2]), "axes.skip.0", "a skip value is a list of layers"),
    ("skip: index past the model in a set with a symbolic item", spec("skip", skip=[[{"every": 2}, 5]]),
     "axes.skip.0.1", "layer 5 is outside 0..3"),
    ("steering: bad every in a set", spec(layer=[[1, {"every": -1}]], strength=[1.0], vector_type=["pca"]),
     "axes.layer.0", "every: -1 must be an integer >= 1"),
    ("duplicate symbolic values", spec("early_exit", exit_layer=["all", "all"]), "axes.exit_layer",
     "duplicate value 'all'"),
]


@pytest.mark.parametrize("text,field,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_layer_forms_are_one_line_exit_2(tmp_path, monkeypatch, capsys, text, field, reason):
    err = bad_input(tmp_path, monkeypatch, capsys, text)
    assert re.match(rf"^error: spec\.yaml: {re.escape(field)}: .*{re.escape(reason)}", err), err
