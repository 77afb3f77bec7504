"""Ablation, skip and early-exit specs: bad input is one line naming the field, exit 2, no store; good specs expand."""
from __future__ import annotations

import json
import re

import pytest

from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import bad_input

ABLATION = """\
name: kinds
model: tiny-llama
kind: ablation
n_train: 4
n_eval: 2
axes:
  seed: [0]
  family: [antonyms]
  component: [attn, head]
  layer: [0, 3]
  method: [zero, clean_to_corrupt]
  head: [all]
"""
SKIP = ABLATION.split("axes:")[0].replace("kind: ablation", "kind: skip") + """axes:
  seed: [0]
  family: [antonyms]
  skip: [[], [1], [1, 2]]
"""
EXIT = ABLATION.split("axes:")[0].replace("kind: ablation", "kind: early_exit") + """axes:
  seed: [0]
  family: [antonyms]
  exit_layer: [0, 3]
"""
NO_CORRUPT = "\n".join(json.dumps({"prompt": f"{w} ->", "target": " yes", "distractor": " no"})
                       for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta")) + "\n"

CASES = [
    ("head with another component", ABLATION.replace("[attn, head]", "[attn]"), {}, "axes.head",
     "only used with component 'head'"),
    ("head component without heads", ABLATION.replace("  head: [all]\n", ""), {}, "axes.head", "needs a head axis"),
    ("head index out of range", ABLATION.replace("[all]", "[0, 4]"), {}, "axes.head.1", "head 4 is outside 0..3"),
    ("unknown component", ABLATION.replace("[attn, head]", "[attention, head]"), {}, "axes.component.0",
     "'layer', 'attn', 'mlp', 'head' or 'resid'"),
    ("unknown method", ABLATION.replace("[zero, clean_to_corrupt]", "[zeros]"), {}, "axes.method.0",
     "did you mean 'zero'"),
    ("ablation layer out of range", ABLATION.replace("[0, 3]", "[0, 9]"), {}, "axes.layer.1", "outside 0..3"),
    ("patching without corrupt prompts", ABLATION.replace("[antonyms]", "[plain.jsonl]"), {"plain.jsonl": NO_CORRUPT},
     "axes.method", "need corrupt prompts but family 'plain'"),
    ("skip layer out of range", SKIP.replace("[1, 2]]", "[1, 7]]"), {}, "axes.skip.2.1", "layer 7 is outside 0..3"),
    ("skip set repeats a layer", SKIP.replace("[1, 2]]", "[2, 2]]"), {}, "axes.skip.2", "repeats a layer"),
    ("duplicate skip sets", SKIP.replace("[1, 2]]", "[1]]"), {}, "axes.skip", "duplicate value [1]"),
    ("exit layer out of range", EXIT.replace("[0, 3]", "[0, 4]"), {}, "axes.exit_layer.1", "outside 0..3"),
    ("empty exit axis", EXIT.replace("[0, 3]", "[]"), {}, "axes.exit_layer", "at least 1 item"),
]


@pytest.mark.parametrize("spec_text,files,field,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_kind_input_is_one_line_exit_2_and_touches_no_store(tmp_path, monkeypatch, capsys, spec_text, files,
                                                                field, reason):
    err = bad_input(tmp_path, monkeypatch, capsys, spec_text, files)
    assert re.match(rf"^error: spec\.yaml: {re.escape(field)}: .*{re.escape(reason)}", err), err


def test_head_all_expands_to_every_head_and_only_for_head(tmp_path):
    (tmp_path / "spec.yaml").write_text(ABLATION)
    points = [p.values for p in expand(load_sweep(tmp_path / "spec.yaml"))]
    heads = [p for p in points if p["component"] == "head"]
    assert sorted({p["head"] for p in heads}) == [0, 1, 2, 3]
    assert len(heads) == 4 * 2 * 2 and all("head" not in p for p in points if p["component"] == "attn")
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points) == 4 + 16


def test_a_jsonl_family_without_corrupt_prompts_works_for_non_patching_methods(tmp_path):
    spec = ABLATION.replace("[antonyms]", "[plain.jsonl]").replace("[zero, clean_to_corrupt]", "[zero, mean]")
    (tmp_path / "spec.yaml").write_text(spec)
    (tmp_path / "plain.jsonl").write_text(NO_CORRUPT)
    assert len(expand(load_sweep(tmp_path / "spec.yaml"))) == 2 * (2 + 8)


def test_skip_sets_are_points_and_their_ids_differ(tmp_path):
    (tmp_path / "spec.yaml").write_text(SKIP)
    points = expand(load_sweep(tmp_path / "spec.yaml"))
    assert [p.values["skip"] for p in points] == [[], [1], [1, 2]]
    assert len({p.trial_id for p in points}) == 3
