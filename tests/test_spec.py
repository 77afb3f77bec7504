"""Bad input: one line naming the field and the reason, exit code 2, and nothing in the MLflow store."""
from __future__ import annotations

import json
import re
import sys

import pytest

from orchestrator.__main__ import main
from orchestrator.grid import expand
from orchestrator.spec import load_sweep

GOOD = """\
name: bad_input
model: tiny-llama
kind: steering
n_train: 4
n_eval: 2
axes:
  seed: [0]
  layer: [0, 3]
  strength: [1.0]
  vector_type: [mean_diff]
  family: [antonyms]
"""

ITEM = {"prompt": "hot -> cold\nbig ->", "target": " small", "distractor": " large",
        "corrupt_prompt": "hot -> cold\nbig ->"}
ITEM2 = {**ITEM, "prompt": "up -> down\nbig ->", "corrupt_prompt": "up -> down\nbig ->"}


def jsonl(*rows) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


CASES = [
    # (id, spec text edit, extra files, field the message must name, words in the reason)
    ("unknown key", GOOD + "n_evals: 3\n", {}, "n_evals", "unknown key"),
    ("unknown axis", GOOD.replace("  seed: [0]", "  seed: [0]\n  layers: [1]"), {}, "axes.layers", "unknown key"),
    ("unknown model", GOOD.replace("tiny-llama", "tiny-gpt9"), {}, "model", "unknown model"),
    ("unknown kind", GOOD.replace("kind: steering", "kind: steerng"), {}, "kind", "did you mean 'steering'"),
    ("unknown vector type", GOOD.replace("[mean_diff]", "[mean_dif]"), {}, "axes.vector_type.0", "unknown vector type"),
    ("unknown family", GOOD.replace("[antonyms]", "[antonym]"), {}, "axes.family.0", "unknown task family"),
    ("layer out of range", GOOD.replace("[0, 3]", "[0, 4]"), {}, "axes.layer.1", "outside 0..3"),
    ("negative layer", GOOD.replace("[0, 3]", "[-1]"), {}, "axes.layer.0", "greater than or equal to 0"),
    ("empty axis", GOOD.replace("strength: [1.0]", "strength: []"), {}, "axes.strength", "at least 1 item"),
    ("missing axis", GOOD.replace("  strength: [1.0]\n", ""), {}, "axes.strength", "Field required"),
    ("infinite strength", GOOD.replace("[1.0]", "[.inf]"), {}, "axes.strength.0", "finite number"),
    ("nan strength", GOOD.replace("[1.0]", "[.nan]"), {}, "axes.strength.0", "finite number"),
    ("duplicate value", GOOD.replace("[0, 3]", "[3, 3]"), {}, "axes.layer", "duplicate value 3"),
    ("n_eval of 0", GOOD.replace("n_eval: 2", "n_eval: 0"), {}, "n_eval", "greater than or equal to 1"),
    ("negative gpu", GOOD + "resources: {cpu: 1, gpu: -1}\n", {}, "resources.gpu", "greater than or equal to 0"),
    ("not a mapping", "- just\n- a list\n", {}, "spec", "must be a mapping"),
    ("not yaml", "name: [unclosed\n", {}, "line 2", "not valid YAML"),
    ("missing jsonl", GOOD.replace("[antonyms]", "[nope.jsonl]"), {}, "axes.family", "no such JSONL file"),
    ("malformed jsonl", GOOD.replace("[antonyms]", "[mine.jsonl]"),
     {"mine.jsonl": jsonl(ITEM, ITEM2, "{not json")}, "axes.family", "mine.jsonl:3: malformed JSON"),
    ("jsonl duplicate prompt", GOOD.replace("[antonyms]", "[mine.jsonl]"),
     {"mine.jsonl": jsonl(ITEM, ITEM2, ITEM)}, "axes.family", "mine.jsonl:3: duplicate prompt (first on line 1)"),
    ("jsonl missing key", GOOD.replace("[antonyms]", "[mine.jsonl]"),
     {"mine.jsonl": jsonl(ITEM, {k: v for k, v in ITEM.items() if k != "distractor"})}, "axes.family",
     "mine.jsonl:2: missing key 'distractor'"),
    ("jsonl multi-token target", GOOD.replace("[antonyms]", "[mine.jsonl]"),
     {"mine.jsonl": jsonl({**ITEM, "target": " smallish thing"})}, "axes.family", "mine.jsonl:1: target"),
    ("jsonl too few items", GOOD.replace("[antonyms]", "[mine.jsonl]"),
     {"mine.jsonl": jsonl(ITEM, ITEM2)}, "axes.family", "n_train=4, n_eval=2"),
]


@pytest.mark.parametrize("spec_text,files,field,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_no_store(tmp_path, monkeypatch, capsys, spec_text, files, field,
                                                           reason):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "spec.yaml").write_text(spec_text)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys, "argv", ["orchestrator", "sweep", "spec.yaml"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.match(r"^error: spec\.yaml: [\w.\- ]+: .+", err), err
    assert f"spec.yaml: {field}:" in err, err
    assert reason in err, err
    assert not (tmp_path / "mlruns").exists()


def test_a_good_spec_loads_and_expands(tmp_path):
    (tmp_path / "spec.yaml").write_text(GOOD)
    sweep = load_sweep(tmp_path / "spec.yaml")
    points = expand(sweep)
    assert len(points) == 2 and len({p.trial_id for p in points}) == 2
    assert [p.trial_id for p in expand(load_sweep(tmp_path / "spec.yaml"))] == [p.trial_id for p in points]


def test_trial_ids_change_with_settings_that_change_results(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("n_eval: 2", "n_eval: 3"))
    (tmp_path / "c.yaml").write_text(GOOD.replace("name: bad_input", "name: renamed"))
    a, b, c = (expand(load_sweep(tmp_path / f"{x}.yaml")) for x in "abc")
    assert {p.trial_id for p in a}.isdisjoint({p.trial_id for p in b})
    assert [p.trial_id for p in a] == [p.trial_id for p in c]  # the sweep's name is not a result setting


def test_jsonl_family_is_found_relative_to_the_spec_and_its_content_is_part_of_the_id(tmp_path):
    rows = [{**ITEM, "prompt": f"word{i} -> cold\nbig ->", "corrupt_prompt": f"word{i} -> cold\nbig ->"}
            for i in range(6)]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.jsonl").write_text(jsonl(*rows))
    (tmp_path / "spec.yaml").write_text(GOOD.replace("[antonyms]", "[sub/mine.jsonl]"))
    sweep = load_sweep(tmp_path / "spec.yaml")
    assert sweep.axes["family"] == ["mine"]
    assert len(sweep.splits[("mine", 0)].train) == 4 and len(sweep.splits[("mine", 0)].eval) == 2
    before = [p.trial_id for p in expand(sweep)]
    (tmp_path / "sub" / "mine.jsonl").write_text(jsonl(*reversed(rows)))
    assert [p.trial_id for p in expand(load_sweep(tmp_path / "spec.yaml"))] != before


def test_dry_run_prints_the_grid_and_touches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(GOOD)
    monkeypatch.setattr(sys, "argv", ["orchestrator", "sweep", "spec.yaml", "--dry-run"])
    main()
    out = capsys.readouterr().out
    assert "2 grid points" in out and "layer=2" in out and "seed=1" in out
    assert not (tmp_path / "mlruns").exists()


def test_a_bare_file_store_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(GOOD)
    monkeypatch.setattr(sys, "argv", ["orchestrator", "sweep", "spec.yaml", "--tracking-uri", "mlruns"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "error: --tracking-uri: 'mlruns' is a bare file store" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()
