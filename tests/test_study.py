"""Studies (orchestrator/study.py): inheritance, members refused before anything runs, the key-metrics rows checked by
hand, and studies/smoke.yaml end to end (slow: Ray and MLflow)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator.report import atlas_table
from orchestrator.report.record import SweepRecord
from orchestrator.spec import SpecError
from orchestrator.study import load_study
from tests.conftest import REPO, run_main

STUDY = {
    "name": "st",
    "models": ["tiny-llama", "tiny-qwen2"],
    "families": ["antonyms", "capitalization"],
    "seeds": [0, 1],
    "sweeps": [
        {"name": "abl", "kind": "ablation", "n_train": 4, "n_eval": 2,
         "axes": {"layer": [0, 1], "component": ["layer"], "method": ["mean"]}},
        {"name": "steer", "kind": "steering", "model": "tiny-llama", "n_train": 4, "n_eval": 2,
         "axes": {"seed": [3], "family": ["antonyms"], "layer": [0], "strength": [1.0],
                  "vector_type": ["mean_diff"]}, "baseline": {"shots": 0}},
    ],
}


def _write(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path


def test_members_inherit_the_study_and_override_it(tmp_path):
    study = load_study(_write(tmp_path, STUDY))
    try:
        (first, abl), (second, steer) = study.members
        assert (first, abl.spec.name) == ("abl", "st.abl")
        assert abl.axes["model"] == ["tiny-llama", "tiny-qwen2"] and [p.name for p in abl.parts] == STUDY["models"]
        assert abl.axes["seed"] == [0, 1] and abl.axes["family"] == ["antonyms", "capitalization"]
        assert (second, steer.spec.name) == ("steer", "st.steer")
        assert "model" not in steer.axes and [p.name for p in steer.parts] == ["tiny-llama"]  # its own model
        assert steer.axes["seed"] == [3] and steer.axes["family"] == ["antonyms"]  # its own seeds and families
    finally:
        study.close()


def test_a_bad_member_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    bad = yaml.safe_load(yaml.safe_dump(STUDY))
    bad["sweeps"][1]["axes"]["layer"] = [99]
    path = _write(tmp_path, bad)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "study", str(path))
    assert code == 2
    assert err.strip().startswith("error: study.yaml: sweeps[1].axes.layer.0: layer 99 is outside 0..")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()  # the store untouched: the first member did not run either
    with pytest.raises(SpecError, match=r"sweeps\[1\]\.name: 'abl' is already"):
        load_study(_write(tmp_path, {**STUDY, "sweeps": [STUDY["sweeps"][0]] * 2}))
    with pytest.raises(SpecError, match=r"study.yaml: sweeps\[1\]: "):
        load_study(_write(tmp_path, {**STUDY, "sweeps": [STUDY["sweeps"][0], "abl"]}))
    with pytest.raises(SpecError, match=r"study.yaml: seeds: "):
        load_study(_write(tmp_path, {**STUDY, "seeds": []}))


def _record(kind: str, frame: pd.DataFrame, n_layers: int = 4) -> SweepRecord:
    return SweepRecord("r", kind, "m", n_layers, frame, pd.DataFrame(), axes=[c for c in frame if c != "kl"])


def test_ablation_rows_against_a_hand_computation():
    rng = np.random.default_rng(0)
    rows = [{"seed": s, "layer": layer, "family": f, "component": c, "method": "mean", "kl": float(rng.random())}
            for s in (0, 1, 2) for layer in range(4) for f in ("a", "b") for c in ("layer", "mlp")]
    frame = pd.DataFrame(rows)
    rec = _record("ablation", frame)
    for seed in (0, 1, 2):
        own = frame[(frame["seed"] == seed) & (frame["component"] == "layer")]
        by_layer = {layer: own[own["layer"] == layer]["kl"].mean() for layer in range(4)}
        hub = max(by_layer, key=by_layer.get)
        assert atlas_table.hub_layer(rec)[seed] == hub
        assert atlas_table.hub_depth(rec)[seed] == hub / 4
        assert math.isclose(atlas_table.ROWS.get("hub max KL").value(rec)[seed], by_layer[hub])
        mlp = frame[(frame["seed"] == seed) & (frame["component"] == "mlp")]
        assert math.isclose(atlas_table.ROWS.get("MLP max effect").value(rec)[seed],
                            max(mlp[mlp["layer"] == layer]["kl"].mean() for layer in range(4)))
    got = atlas_table.cell(atlas_table.ROWS.get("hub max KL"), rec, "r", "#")
    values = atlas_table.ROWS.get("hub max KL").value(rec)
    assert got.text == f"{values.mean():.3g} ± {values.std(ddof=1):.2g}" and got.grade == "B"  # no control: B at best


def test_steering_boost_reads_non_random_positive_cells_only():
    rows = [{"seed": s, "layer": 0, "strength": st, "vector_type": vt, "family": f,
             "ld_delta": (10.0 if vt == "random" else st * (s + 1) + (0.5 if f == "a" else -0.5))}
            for s in (0, 1) for st in (-2.0, 1.0, 2.0) for vt in ("mean_diff", "random") for f in ("a", "b")]
    rows += [{"seed": s, "layer": "[0, 1]", "strength": 1.0, "vector_type": "mean_diff", "family": f,
              "ld_delta": -3.0 * (s + 1) + (1.0 if f == "a" else 0.0)} for s in (0, 1) for f in ("a", "b")]
    rows += [{"seed": s, "layer": "[0, 1]", "strength": 1.0, "vector_type": "random", "family": "a", "ld_delta": 50.0}
             for s in (0, 1)]
    frame = pd.DataFrame(rows)
    frame["layer"] = frame["layer"].astype(str)  # as the record types a layer axis holding sets: JSON text
    rec = _record("steering", frame)
    boost = atlas_table.best_boost(rec)
    assert boost.to_dict() == {0: 2.0, 1: 4.0}  # family mean of mean_diff at strength 2: 2 * (seed + 1)
    assert atlas_table.multi_layer(rec).to_dict() == {0: -2.5, 1: -5.5}  # the set's family mean, signed


def test_rows_nothing_measures_say_why():
    frame = pd.DataFrame([{"seed": 0, "layer": 0, "family": "a", "component": "layer", "method": "mean", "kl": 1.0}])
    cells = atlas_table.table([("st.abl", _record("ablation", frame), "#")], ["m"])
    assert list(cells) == atlas_table.ORDER
    assert cells["layer skipping"]["m"] == "not measured: no skip member in the study"
    assert cells["cross-model transfer zone"]["m"] == "not measured: no cross_model_patch member in the study"
    assert cells["hub layer"]["m"].grade == "C"  # one seed


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestrator.grid import expand
    from orchestrator.report.study_page import write_study_report
    from orchestrator.store import resolve_uri
    from orchestrator.study import STUDY_TAG, run_study

    monkeypatch.chdir(tmp_path)
    study = load_study(REPO / "studies" / "smoke.yaml")
    try:
        first = run_study(study)
        assert first.ran == ["atlas", "steer"] and not first.failed
        again = run_study(study)
        assert again.ran == [] and again.skipped == ["atlas", "steer"]
        client = MlflowClient(resolve_uri())
        for _, sweep in study.members:
            experiment = client.get_experiment_by_name(sweep.spec.name)
            runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
            children = [r for r in runs if r.data.tags.get("orchestrator.role") == "trial"]
            ids = [r.data.tags["orchestrator.trial_id"] for r in children]
            assert sorted(ids) == sorted(p.trial_id for p in expand(sweep))  # exactly one FINISHED run per point
            assert all(r.data.tags.get(STUDY_TAG) == "smoke_study" for r in runs)
    finally:
        study.close()
    made = write_study_report(resolve_uri(), "smoke_study")
    page = made.html.read_text(encoding="utf-8")
    table = page[page.index("id='key-metrics'"):page.index("id='separability'")]
    sss = page[page.index("id='separability'"):page.index("<h2>Sweeps")]
    for family in ("antonyms", "capitalization"):  # ablation: 3 components per family
        assert sss.count(f"<td>{family}</td>") == 2  # once per model
    for name in atlas_table.ORDER:
        assert f">{name}" in table
        assert set(made.cells[name]) == {"tiny-llama", "tiny-qwen2"}  # a cell per model per row
    assert len(re.findall(r"<td", table)) == 2 * len(atlas_table.ORDER)
    assert len(re.findall(r"± ", table)) >= 2 * 7  # four ablation rows (no heads), boost, multi-layer, selectivity
    assert "not measured: smoke_study.steer" not in table  # the layer set gives the multi-layer row
    assert "not measured: no skip member in the study" in table
    assert "smoke_study.atlas" in page and "smoke_study.steer" in page


def test_the_shipped_atlas_study_validates_on_tiny_stand_ins(tmp_path):
    raw = yaml.safe_load((REPO / "studies" / "atlas.yaml").read_text(encoding="utf-8"))
    assert raw["models"] == ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert len(raw["families"]) == 6 and raw["seeds"] == [0, 1]
    kinds = {body["kind"] for body in raw["sweeps"]}
    readers = {atlas_table.ROWS.get(n).kind for n in atlas_table.ORDER} - {None}
    assert readers <= kinds  # every row has a member to read
    study = load_study(_write(tmp_path, {**raw, "models": ["tiny-llama", "tiny-qwen2"]}))  # the packs need no install
    try:
        assert [m for m, _ in study.members] == ["hubs", "heads", "steering", "skipping", "exit", "adapters",
                                                 "transfer"]
    finally:
        study.close()
