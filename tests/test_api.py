"""The Python API (orchestrator/api.py): `oc.sweep` on a dict, a YAML string or a path, `oc.load`, the Atlas readers."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

import orchestrator as oc
from interventions.registry import AtlasError
from orchestrator.spec import SpecError
from tests.conftest import REPO, tiny_steering


def test_import_orchestrator_stays_light():
    code = ("import sys, orchestrator; assert orchestrator.__version__; "
            "heavy = [m for m in ('torch', 'ray', 'mlflow', 'pandas', 'orchestrator.api') if m in sys.modules]; "
            "assert not heavy, heavy; assert callable(orchestrator.sweep) and 'orchestrator.api' in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_a_bad_dict_spec_raises_the_one_line_spec_error_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load(tiny_steering("api_bad"))
    spec["axes"]["layer"] = [0, 9]
    with pytest.raises(SpecError) as caught:
        oc.sweep(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(caught.value) == "api_bad.yaml: axes.layer.1: layer 9 is outside 0..3 (tiny-llama has 4 layers)"
    spec["axes"]["layr"] = spec["axes"].pop("layer")
    with pytest.raises(SpecError, match=r"^api_bad.yaml: axes.layr: unknown key; did you mean 'layer'\?$"):
        oc.sweep(spec)
    with pytest.raises(SpecError, match=r"^spec: line 2: not valid YAML"):
        oc.sweep("name: x\n  kind: [steering\n")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_dict_spec_resolves_jsonl_families_against_the_current_directory(tmp_path, monkeypatch):
    from orchestrator.api import load_spec
    from tests.conftest import ITEM, ITEM2, jsonl

    words = ["up", "in", "on", "hot", "old", "new"]
    (tmp_path / "mine.jsonl").write_text(jsonl(*[{**item, "prompt": f"{w} -> {item['prompt']}",
                                                  "corrupt_prompt": f"{w} -> {item['corrupt_prompt']}"}
                                                 for w in words for item in (ITEM, ITEM2)]))
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load(tiny_steering("api_jsonl"))
    spec["axes"]["family"] = ["mine.jsonl"]
    loaded, folder = load_spec(spec)
    try:
        assert loaded.axes["family"] == ["mine"] and loaded.base_dir == tmp_path.resolve()
        assert loaded.path.name == "api_jsonl.yaml"
    finally:
        folder.cleanup()


@pytest.mark.slow  # Ray, end to end
def test_sweep_a_dict_then_load_gives_the_same_table_and_a_second_sweep_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    spec = yaml.safe_load(tiny_steering("api_tiny"))
    atlas = oc.sweep(spec, tracking_uri=uri)  # 2 steering points and the prompting baseline
    assert atlas.ran == 3 and not atlas.failed and not atlas.interrupted
    table = atlas.table()
    assert len(table) == 3 and {"ld_delta_mean", "ld_delta_std", "ld_delta_n"} <= set(table.columns)

    loaded = oc.load("api_tiny", tracking_uri=uri)
    pd.testing.assert_frame_equal(loaded.table(), table)
    runs = loaded.runs()
    assert len(runs) == 3 and {"run_id", "trial_id", "layer", "ld_delta"} <= set(runs.columns)
    items = loaded.items()
    assert set(items["trial_id"]) == set(runs["trial_id"]) and {"ld_clean", "ld_steered"} <= set(items.columns)
    for _, run in runs.iterrows():  # the per-item values average to the point's metric
        mine = items[items["trial_id"] == run["trial_id"]]
        assert (mine["ld_steered"] - mine["ld_clean"]).mean() == pytest.approx(run["ld_delta"], abs=1e-5)
    vectors = loaded.vectors()
    assert set(vectors) == {f"antonyms/seed=0/layer={layer}/{v}" for layer in (0, 2) for v in ("mean_diff", "r_L")}
    saved = loaded.vector(family="antonyms", seed=0, layer=2, vector_type="mean_diff")
    assert float(saved.unit.norm()) == pytest.approx(1.0, abs=1e-5) and saved.r_l > 0
    inputs = loaded.inputs()
    assert set(inputs["split"]) == {"train", "eval"} and (inputs["split"] == "eval").sum() == 2
    assert "heatmap" in " ".join(loaded.figures())
    figure = loaded.figure(loaded.figures()[0])
    assert figure.axes
    report = loaded.report(tmp_path / "report")
    assert report.html.is_file() and report.pngs
    with pytest.raises(AtlasError, match="hubs.parquet"):
        loaded.hubs()  # a steering sweep has no hub table

    capsys.readouterr()
    again = oc.sweep(spec, tracking_uri=uri)
    out = capsys.readouterr().out
    assert again.ran == 0 and "all 3 grid points already finished; nothing to run" in out
    assert "starting a local Ray" not in out
    pd.testing.assert_frame_equal(again.table(), table)


def test_load_of_an_unknown_sweep_is_one_line_naming_it(tmp_path):
    (tmp_path / "mlflow.db").touch()
    with pytest.raises(AtlasError, match=r"^name: no sweep named 'nope' in sqlite:///"):
        oc.load("nope", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
