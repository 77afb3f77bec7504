"""`report` and `compare` as a reader meets them: from an MLflow record to figures, cards, HTML and a browser.

The stores are written with the sweep's own writer (`Tracker.log_trial`) and constructed
metrics, so that the hub and every number are known in advance; no Ray, no model runs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.grid import expand
from orchestrator.report import write_report
from orchestrator.report.compare import write_compare
from orchestrator.report.html import screenshot
from orchestrator.report.record import SweepRecord, read, tidy
from orchestrator.report.sections import SECTIONS
from orchestrator.spec import load_sweep
from orchestrator.tracking import Tracker
from tests.conftest import run_main

ABLATION = """\
name: {name}
model: {model}
kind: ablation
n_train: 4
n_eval: 2
axes:
  seed: [0, 1, 2]
  family: [antonyms, copying]
  component: [layer]
  method: [mean, zero]
  layer: {layers}
"""
STEERING = """\
name: steer
model: tiny-llama
kind: steering
n_train: 4
n_eval: 2
axes:
  seed: [0, 1, 2]
  family: [antonyms]
  layer: [0, 2]
  strength: [-1, 1]
  vector_type: [mean_diff, random]
"""
PROFILES = {"mean": [1.0, 5.0, 2.0, 0.5], "zero": [2.0, 6.0, 1.0, 3.0]}  # tiny-llama: the hub is L1
DEEP = {0: 0.5, 6: 1.0, 12: 7.0, 18: 2.0, 24: 1.5}  # smollm2-135m (30 layers): the hub is L12, depth 0.4


def ablation_metrics(profiles: dict):
    """Metrics of a grid point from a KL profile (per method, or one for every method) plus seed/family offsets."""
    def metrics(v: dict) -> dict:
        profile = profiles.get(v["method"], profiles)
        return {"kl": profile[v["layer"]] + 0.01 * v["seed"] + (0.05 if v["family"] == "copying" else 0.0),
                "accuracy_clean": 1.0}

    return metrics


def steering_metrics(v: dict) -> dict:
    if v["vector_type"] == "prompt":  # the 4-shot prompting baseline: one point per seed and family
        return {"ld_delta": 1.5 + 0.01 * v["seed"], "kl": 0.2, "accuracy_clean": 1.0}
    boost = 3.0 if v["vector_type"] == "mean_diff" and v["layer"] == 2 else 0.0
    return {"ld_delta": v["strength"] * (boost + 0.2) + 0.05 * v["seed"], "kl": 0.1, "accuracy_clean": 1.0}


def record_sweep(folder: Path, text: str, metrics, bad: bool = False) -> str:
    """Log every grid point of the spec as a FINISHED child run (plus a FAILED and a KILLED one if `bad`)."""
    sweep = load_sweep(_write(folder, f"spec{len(list(folder.glob('*.yaml')))}.yaml", text))
    tracker = Tracker(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}", sweep)
    points = expand(sweep)
    parent = tracker.start_parent(len(points), len(points))
    for point in points:
        tracker.log_trial(parent, point, metrics(point.values), {})
    if bad:  # a crashed and a killed attempt at a point, with absurd numbers: a report must never read them
        for status in ("FAILED", "KILLED"):
            run = tracker.log_trial(parent, points[0], {**metrics(points[0].values), "kl": 1e6}, {})
            tracker.client.set_terminated(run, status)
    tracker.end_parent(parent, "FINISHED")
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store in <tmp>/mlruns with four sweeps: abl, deep, steer, and empty (no FINISHED trial)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the default store: artifacts land under <tmp>/mlruns/artifacts
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        parents = {
            "abl": record_sweep(root, ABLATION.format(name="abl", model="tiny-llama", layers="[0, 1, 2, 3]"),
                                ablation_metrics(PROFILES), bad=True),
            "deep": record_sweep(root, ABLATION.format(name="deep", model="smollm2-135m", layers=list(DEEP)),
                                 ablation_metrics(DEEP)),
            "steer": record_sweep(root, STEERING, steering_metrics),
        }
        empty = load_sweep(_write(root, "empty.yaml", ABLATION.format(name="empty", model="tiny-llama",
                                                                      layers="[0]")))
        tracker = Tracker(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", empty)
        parent = tracker.start_parent(1, 1)
        run = tracker.log_trial(parent, expand(empty)[0], {"kl": 1.0}, {})
        tracker.client.set_terminated(run, "FAILED")
    return root, f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", parents


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder / name


def test_tidy_types_params_and_keeps_the_newest_run_of_a_point():
    runs = [{"run_id": "old", "start_time": 1, "params": {"seed": "0", "layer": "3", "strength": "-1.0",
                                                          "skip": "[1, 2]", "family": "antonyms"},
             "metrics": {"kl": 9.0, "norm_layer": 7.0}},
            {"run_id": "new", "start_time": 2, "params": {"seed": "0", "layer": "3", "strength": "-1.0",
                                                          "skip": "[1, 2]", "family": "antonyms"},
             "metrics": {"kl": 1.0, "norm_layer": 7.0}},
            {"run_id": "other", "start_time": 3, "params": {"seed": "1", "layer": "3", "strength": "0.5",
                                                            "skip": "[]", "family": "antonyms"},
             "metrics": {"kl": 2.0}}]
    frame, notes = tidy(runs, curve_keys=("norm_*",))
    assert list(frame["run_id"]) == ["new", "other"] and list(frame["kl"]) == [1.0, 2.0]
    assert frame["seed"].dtype == "int64" and frame["strength"].dtype == "float64"
    assert list(frame["skip"]) == ["[1, 2]", "[]"] and "norm_layer" not in frame
    assert notes == ["1 runs of grid points that ran again later were left out (newest kept)"]


def test_the_record_is_the_finished_trial_runs_only(store):
    root, uri, parents = store
    record = read(uri, "abl")
    assert len(record.frame) == 3 * 2 * 2 * 4 and record.frame["kl"].max() < 100  # no FAILED / KILLED / parent
    assert (record.kind, record.model, record.n_layers, record.parent_id) == ("ablation", "tiny-llama", 4,
                                                                               parents["abl"])
    assert record.frame["layer"].dtype == "int64" and set(record.axes) >= {"seed", "family", "layer", "method"}


def test_report_command_writes_every_figure_and_card_and_logs_them(store, monkeypatch, capsys):
    root, uri, parents = store
    monkeypatch.chdir(root)  # default store and default --out
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run_main(monkeypatch, capsys, "report", "abl")
    assert code == 0, err
    page = root / "mlruns" / "reports" / "abl" / "report.html"
    assert f"report: {page}" in out and "#1 [A]" in out
    text = page.read_text()
    built = write_report(uri, "abl", root / "again", log=False)
    assert [s.id for s in built.figures] == ["ablation_profiles", "ablation_families", "spearman_layer"]
    assert text.count("src='data:image/png;base64,") == len(built.figures)
    for shown in built.figures:
        assert f"id='fig-{shown.id}'" in text and (page.parent / f"{shown.id}.png").stat().st_size > 5000
    assert text.count("<div class='card grade-") == len(built.cards) >= 4
    for i, made in enumerate(built.cards, 1):
        assert f"id='card-{i}'" in text and made.claim.split(":")[0] in text
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parents["abl"], "report")}
    assert logged == {f"report/{n}" for n in ("report.html", *(f"{s.id}.png" for s in built.figures))}


def test_ablation_figures_mark_the_hub_of_the_table(store):
    root, uri, _ = store
    built = write_report(uri, "abl", root / "abl_figs", log=False)
    figures = {s.id: s.figure for s in built.figures}
    panels = figures["ablation_profiles"].axes
    assert [ax.get_title() for ax in panels] == ["layer / mean", "layer / zero"]
    for ax in panels:
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("layer", "KL (family mean)")
        hub = [line for line in ax.lines if line.get_gid() == "hub"]
        assert len(hub) == 1 and hub[0].get_xdata()[0] == 1  # both methods peak at L1 in the table
    families = [ax for ax in figures["ablation_families"].axes]
    assert [ax.get_title() for ax in families] == ["antonyms", "copying"]
    spearman = figures["spearman_layer"].axes[0]
    assert spearman.get_title() == "layer: Spearman of layer rankings" and spearman.get_xlabel() == "method"
    hub_card = built.cards[0]
    assert hub_card.grade == "A" and hub_card.extra["layer"] == 1 and hub_card.figure == "ablation_profiles"
    assert hub_card.mean == pytest.approx(np.mean([5.0 + 0.01 * s + 0.025 for s in range(3)]))


def test_steering_report_shows_the_random_control_beside_each_vector(store):
    root, uri, _ = store
    built = write_report(uri, "steer", root / "steer", log=False)
    heat = built.figures[0].figure
    panels = [ax for ax in heat.axes if ax.get_xlabel() == "strength (units of r_L)"]
    assert [ax.get_title() for ax in panels] == ["mean_diff", "random (control)"]
    assert all(ax.get_ylabel() == "layer" for ax in panels)
    assert any("±" in t.get_text() for t in panels[0].texts)  # the cross-seed std is printed in the cells
    boost = next(c for c in built.cards if "raises" in c.claim)
    assert (boost.extra["layer"], boost.extra["strength"], boost.grade) == (2, 1.0, "A")
    assert boost.control_mean == pytest.approx(np.mean([0.2 + 0.05 * s for s in range(3)]))
    # the 4-shot prompting baseline: a line on the colour bar and a column beside each heatmap, and a card
    colorbar = next(ax for ax in heat.axes if ax not in panels)
    line = [x for x in colorbar.lines if x.get_gid() == "prompt"]
    assert len(line) == 1 and line[0].get_ydata()[0] == pytest.approx(1.51)
    assert [t.get_text() for t in panels[0].get_xticklabels()][-1] == "4-shot"
    versus = next(c for c in built.cards if "4-shot prompting" in c.claim)
    assert "steering (mean_diff at L2" in versus.claim and versus.extra["steering_ahead"]
    assert versus.mean == pytest.approx(np.mean([3.2 + 0.05 * s for s in range(3)]))
    assert versus.control_mean == pytest.approx(1.51) and versus.grade == "A"


def test_compare_puts_both_hubs_on_a_depth_axis(store, monkeypatch, capsys):
    root, uri, _ = store
    code, out, err = run_main(monkeypatch, capsys, "compare", "abl", "deep", "--tracking-uri", uri,
                             "--out", str(root / "cmp"))
    assert code == 0, err
    assert (root / "cmp" / "compare.html").is_file() and "[A]" in out
    built = write_compare(uri, "abl", "deep", root / "cmp2")
    axes = built.figures[0].figure.axes
    assert len(axes) == 3 and all(ax.get_xlabel() == "depth (layer / n_layers)" for ax in axes)
    hubs = [[line.get_xdata()[0] for line in ax.lines if line.get_gid() == "hub"] for ax in axes[:2]]
    assert hubs == [[0.25], [0.4]]  # L1 of 4 layers, L12 of 30
    moved = next(c for c in built.cards if "deeper" in c.claim)
    assert moved.grade == "A" and moved.mean == pytest.approx(0.4) and moved.control_mean == pytest.approx(0.25)


@pytest.mark.parametrize("args,message", [
    (("report", "nope"), "error: SWEEP_NAME: no sweep named 'nope' in "),
    (("report", "empty"), "error: SWEEP_NAME: sweep 'empty' has no FINISHED trial runs in "),
    (("compare", "abl", "nope"), "error: SWEEP_B: no sweep named 'nope'"),
    (("compare", "abl", "steer"), "error: SWEEP_B: 'steer' is a sweep of kind steering and 'abl' of kind ablation"),
])
def test_bad_input_is_one_line_and_exit_2(store, monkeypatch, capsys, args, message):
    root, uri, _ = store
    code, out, err = run_main(monkeypatch, capsys, *args, "--tracking-uri", uri, "--out", str(root / "bad"))
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (root / "bad").exists()


def test_a_missing_store_is_not_created(tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "report", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert code == 2 and err.startswith("error: --tracking-uri: the store") and not (tmp_path / "m.db").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium for the headless screenshot")
def test_the_report_renders_in_headless_chromium(store):
    import matplotlib.image

    root, uri, _ = store
    built = write_report(uri, "abl", root / "shot", log=False)
    shot = screenshot(built.html, root / "shot" / "page.png", width=1200, height=2400)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200) and pixels[..., :3].std() > 0.05  # drawn, not a blank page


def layer_record(kind: str, rows: list[dict], n_layers: int = 4, curves: pd.DataFrame | None = None) -> SweepRecord:
    frame = pd.DataFrame(rows).assign(model="m", kind=kind)
    return SweepRecord("t", kind, "m", n_layers, frame, curves if curves is not None else pd.DataFrame(),
                       [c for c in frame if c not in ("model", "kind", "run_id")])


def test_early_exit_and_skip_curves_show_kl_and_agreement_by_layer():
    exits = [{"run_id": f"{s}{L}", "seed": s, "family": "antonyms", "exit_layer": L, "kl": 4.0 - L,
              "top1_agreement": [0.1, 0.6, 0.3, 1.0][L] + 0.01 * s, "top5_overlap": 0.25 * (L + 1)}
             for s in range(3) for L in range(4)]
    built = SECTIONS.get("early_exit").build(layer_record("early_exit", exits))
    left, right = built.figures[0].figure.axes
    assert (left.get_ylabel(), right.get_ylabel()) == ("KL(full || intervened)", "agreement with the full model")
    assert left.get_xlabel() == right.get_xlabel() == "exit layer"
    assert [line.get_label() for line in right.lines if line.get_gid() != "hub"] == ["top1_agreement", "top5_overlap"]
    assert built.cards[0].extra["layer"] == 1 and built.cards[0].grade == "A"  # L3 is the full model, not an exit
    skips = [{"run_id": f"{s}{k}", "seed": s, "family": "antonyms", "skip": json.dumps(k),
              "kl": 1.0 + len(k) + (k == [2]), "top1_agreement": 0.5,
              "top5_overlap": 0.5} for s in range(3) for k in ([0], [1], [2], [3], [1, 2])]
    built = SECTIONS.get("skip").build(layer_record("skip", skips))
    assert [s.id for s in built.figures] == ["skip_curves", "skip_sets"]
    assert built.figures[0].figure.axes[0].get_xlabel() == "skipped layer"
    assert built.cards[0].extra["layer"] == 2  # the most harmful single-layer skip


def test_adapter_report_reads_the_per_layer_curves():
    rows, curves = [], []
    for s in range(3):
        for op in ("norm_profile", "norm_effect"):
            run = f"{op}{s}"
            rows.append({"run_id": run, "seed": s, "family": "arithmetic", "operation": op, "rank": 4,
                         "pearson": 0.8 + 0.01 * s if op == "norm_effect" else np.nan})
            for layer in range(4):
                norm = [1, 2, 5, 1][layer] + 0.1 * s
                curves.append({"run_id": run, "key": "norm_layer", "step": layer, "value": norm})
                if op == "norm_effect":
                    curves.append({"run_id": run, "key": "effect_layer", "step": layer, "value": [1, 2, 4, 1][layer]})
    built = SECTIONS.get("adapter").build(layer_record("adapter", rows, curves=pd.DataFrame(curves)))
    figures = {s.id: s.figure for s in built.figures}
    assert list(figures) == ["adapter_norms", "adapter_effects", "adapter_norm_effect"]
    assert figures["adapter_norms"].axes[0].get_ylabel() == "||B A||_F x scaling"
    assert "Pearson r = " in figures["adapter_norm_effect"].axes[0].get_title()
    peak = next(c for c in built.cards if "norm peaks" in c.claim)
    assert peak.extra["layer"] == 2 and peak.grade == "A"
    assert next(c for c in built.cards if "Pearson" in c.claim).grade == "B"  # no control for a correlation
