"""A new user's first hour, without Ray: CLI help and hints, an unreachable hub id failing in seconds, JSONL hints and
the cancelling-pairs warning, the cost-weighted ETA, one parent run per spec (continued, never empty), the UI's view,
`export`, and figures readable at 100 %."""
from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from rich.console import Console

from interventions import hub
from interventions.families import Split, make_split
from interventions.families.pairs import mean_cosine, warnings
from interventions.kinds import KINDS
from interventions.models import describe
from orchestrator import progress
from orchestrator.aggregate import aggregate, render
from orchestrator.report.figures import depth_compare, png
from orchestrator.report.steering_figures import steering_heatmaps
from orchestrator.spec import load_sweep
from tests.conftest import bad_input, free_port, role, run_main, spec, store

# --- small CLI things ------------------------------------------------------------------------------------------------


def test_bare_command_prints_help_without_error(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys)
    assert code == 0 and out.startswith("Usage:") and "sweep" in out and "export" in out and err == ""


def test_sweep_without_a_spec_points_to_its_help(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "sweep")
    assert code == 2 and err.strip().startswith("error: Missing argument 'SPEC' (see `") and \
        err.strip().endswith(" sweep --help`)"), err


def test_the_console_table_prints_signs_only_where_negative():
    steering = KINDS.get("steering")
    rows = [{"layer": layer, "seed": seed, "ld_delta": 0.9 + 0.1 * seed * layer, **{m: 1.0 for m in steering.shown}}
            for layer in (1, 2) for seed in (0, 1)]
    table = aggregate(rows, ["layer"], list(steering.metrics), "ld_delta")
    console = Console(record=True, width=200)
    console.print(render(table, ["layer"], steering, 5, "t"))
    text = console.export_text()
    assert "0.95 ± 0.071" in text and "+" not in text


# --- a hub id that cannot be reached ---------------------------------------------------------------------------------

HUB_SPEC = spec("steering", "hub", model="{model}", layer=[0], strength=[1.0], vector_type=["mean_diff"])


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-0.5B", "gpt2"])
@pytest.mark.parametrize("network", ["closed port", "no route", "offline"])
def test_an_unreachable_hub_id_fails_in_seconds_naming_the_way_out(tmp_path, monkeypatch, capsys, model, network):
    monkeypatch.setattr(hub, "_cached", lambda name: False)  # a developer's hub cache must not hide the network
    env = {"closed port": {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
           "no route": {"HF_ENDPOINT": "http://10.255.255.1:81"},  # unroutable: the probe's timeout bounds it
           "offline": {"HF_HUB_OFFLINE": "1"}}[network]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    err = bad_input(tmp_path, monkeypatch, capsys, HUB_SPEC.replace("'{model}'", model).replace("{model}", model),
                    env=env)
    assert time.monotonic() - start < 10, "transformers' retries, not the probe"
    assert err.startswith("error: spec.yaml: model: ") and repr(model) in err and "unknown model" not in err, err
    assert ("HF_HUB_OFFLINE is set" if network == "offline" else "cannot be reached") in err, err
    assert "use a built-in model (" in err and all(f"{name}," in err for name in ("smollm2-135m", "tiny-llama")), err
    assert "local folder" in err, err


@pytest.fixture
def fake_hub(monkeypatch):
    """A local stand-in for the hub's API: /api/models/known answers 200, anything else 404 RepoNotFound."""
    import http.server
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            known = self.path.endswith("/known")
            self.send_response(200 if known else 404)
            if not known:
                self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(hub, "_cached", lambda name: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()


def test_the_hub_answering_decides_between_missing_and_found(fake_hub):
    hub.check("org/known", ["tiny-llama"])  # the hub has it: on to transformers
    with pytest.raises(hub.AtlasError, match=r"'org/nope' is not a built-in model, a local folder or a model on the "
                                             r"hub at http://127\.0\.0\.1:\d+ \(HTTP 404 RepoNotFound;"):
        hub.check("org/nope", ["tiny-llama"])


def test_a_misspelt_builtin_is_not_taken_for_a_hub_id():
    assert not hub.looks_like_hub_id("tiny-lama", ["tiny-llama", "smollm2-135m"])
    assert hub.looks_like_hub_id("gpt2", ["tiny-llama", "smollm2-135m"])
    assert not hub.looks_like_hub_id("../my model", ["tiny-llama"])


# --- custom JSONL families: pairs that cancel ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return describe("tiny-llama").tokenizer


def items(pairs: list[tuple[str, str]]) -> list[dict]:
    """Eight train items as given, then two eval items."""
    return [{"prompt": f"Question {i}: the answer is", "target": t, "distractor": d, "split": split}
            for i, ((t, d), split) in enumerate(zip(pairs + [(" up", " down")] * 2, ["train"] * 8 + ["eval"] * 2))]


WORDS = [" cat", " dog", " red", " blue", " sun", " moon", " hot", " cold", " up", " down", " big", " small",
         " left", " right", " old", " new"]
DISJOINT = [(WORDS[i], WORDS[i + 1]) for i in range(0, 16, 2)]  # eight unrelated pairs
SWAPPED = [(" yes", " no"), (" no", " yes")] * 4  # each pair and its mirror: the differences cancel


def write_family(folder, name: str, pairs) -> str:
    (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in items(pairs)) + "\n")
    return f"{name}.jsonl"


def test_pairs_that_swap_target_and_distractor_are_warned_about_once(tmp_path, tok):
    names = [write_family(tmp_path, n, p) for n, p in (("swapped", SWAPPED), ("disjoint", DISJOINT))]
    splits = {(n.removesuffix(".jsonl"), seed): make_split(n, seed, tok, 8, 2, tmp_path) for n in names
              for seed in (0, 1)}
    cosine, unrelated = mean_cosine(splits[("disjoint", 0)], tok)
    assert cosine == pytest.approx(unrelated) == pytest.approx(1 / np.sqrt(8))  # orthogonal pairs: 1/sqrt(n)
    assert mean_cosine(splits[("swapped", 0)], tok)[0] == 0
    lines = warnings(splits, tok)
    assert len(lines) == 1 and lines[0].startswith("warning: family swapped (seed ") and "cancel" in lines[0], lines
    aligned = Split("same", 0, tuple(make_split(names[1], 0, tok, 8, 2, tmp_path).train[:1]) * 4, ())
    assert mean_cosine(aligned, tok)[0] == pytest.approx(1.0)  # one direction repeated: cosine 1


def test_the_sweep_prints_the_warning_and_runs_on(tmp_path, monkeypatch, capsys, tok):
    write_family(tmp_path, "swapped", SWAPPED)
    (tmp_path / "spec.yaml").write_text(spec("steering", "pairs", n_train=8, n_eval=2, family=["swapped.jsonl"],
                                             layer=[0], strength=[1.0], vector_type=["mean_diff"]))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "sweep", "spec.yaml", "--dry-run")
    sizes = "(seed=1, family=1, layer=1, strength=1, vector_type=1; plus 1 the kind adds"  # its prompting baseline
    assert code == 0 and f"2 grid points {sizes}" in out, out + err
    assert [line for line in err.splitlines() if line.startswith("warning: family swapped")], err


# --- progress: an ETA weighted by the layers each point runs --------------------------------------------------------

def test_the_eta_weighs_points_by_the_layers_they_run(monkeypatch):
    """Points of a (seed, family) block run low layers first (costly) then high ones (cheap), block after block.
    At a constant rate of work, the weighted ETA is exact at every quarter; a plain count-based one is not."""
    n_layers, layers = 30, [2, 6, 10, 14, 18, 22, 26]
    grid = [{"seed": s, "layer": layer, "strength": k} for s in range(3) for layer in layers for k in range(8)]
    costs = {str(i): progress.point_cost(v, ("layer",), n_layers, True) for i, v in enumerate(grid)}
    assert costs["0"] == 29 and costs[str(len(grid) - 1)] == 5  # layers 2..29 (+1), 26..29 (+1)
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = progress.TrialProgress(Console(file=open("/dev/null", "w")), "t", costs)
    total, errors, plain = sum(costs.values()), [], []
    done = 0.0
    for i in range(len(grid)):
        done += costs[str(i)]
        clock[0] = 10 + done  # one unit of work per second, after 10 s of start-up
        bar.advance(str(i))
        if i + 1 in (len(grid) // 4, len(grid) // 2, 3 * len(grid) // 4):
            truth = total - done
            errors.append((bar.eta() - bar.end_s) / truth - 1)  # the end's fixed cost comes on top
            since = clock[0] - (10 + costs["0"])
            plain.append((since / i * (len(grid) - i - 1)) / truth - 1)
    assert max(map(abs, errors)) < 1e-9, errors
    assert max(map(abs, plain)) > 0.1, plain  # the count-based ETA is off by more than 10 % somewhere


def test_progress_lines_off_a_terminal_say_what_happens_before_the_first_result():
    console = Console(record=True, width=200, force_terminal=False)
    with progress.phase(console, "starting a local Ray"):
        pass
    with progress.TrialProgress(console, "s", {str(i): 1.0 for i in range(400)}, workers=2) as bar:
        for i in range(400):
            bar.advance(str(i))
    text = console.export_text()
    assert "starting a local Ray ...\nstarting a local Ray: 0 s" in text
    assert "the actors load the model once and build baselines" in text and "first result after" in text
    lines = [line for line in text.splitlines() if line.startswith("s: ") and "points (" in line]
    assert len(lines) == 20 and lines[4].startswith("s: 100/400 points (25 %)") and lines[-1].startswith("s: 400/400")


# --- one parent run per spec, continued; no empty parent; the UI's view; export ------------------------------------

def fake_tune(stop_after: int | None):
    """A stand-in for Ray Tune that finishes every pack (or raises KeyboardInterrupt after `stop_after` packs)."""
    def run(sweep, grouped, recorder, storage, round_=0):
        class Trial:
            def __init__(self, pack):
                self.config, self.num_failures, self.error_file = {"pack": pack}, 0, None
                self.last_result = {"results": [{"trial_id": e["trial_id"], "extra": {},
                                                 "metrics": {"ld_delta": float(len(e["trial_id"])), "kl": 0.5}}
                                                for e in pack], "worker": "w:1"}

        for n, pack in enumerate(grouped):
            if stop_after is not None and n == stop_after:
                raise KeyboardInterrupt
            recorder.on_trial_complete(0, [], Trial([{"trial_id": p.trial_id, "point": p.values} for p in pack]))
    return run


@pytest.fixture
def no_ray(monkeypatch):
    from orchestrator import cluster, runner

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(runner, "check_resources", lambda *args: None)
    return runner


def test_a_rerun_continues_the_parent_and_one_with_nothing_to_do_adds_no_run(tmp_path, monkeypatch, capsys, no_ray):
    from orchestrator import driver

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(spec("steering", "cont", layer=[0, 1, 2, 3], strength=[0.5, 1.0],
                                             vector_type=["mean_diff", "random"],
                                             extra={"baseline": {"shots": 0}}))  # 16 points in 4 packs
    sweep, uri = load_sweep(tmp_path / "spec.yaml"), f"sqlite:///{tmp_path}/m.db"
    console = Console(file=open("/dev/null", "w"))
    monkeypatch.setattr(driver, "_tune", fake_tune(stop_after=2))  # Ctrl-C after two of four packs
    first = no_ray.run_sweep(sweep, tracking_uri=uri, console=console, out_dir=tmp_path)
    assert first.interrupted and first.logged == 8
    monkeypatch.setattr(driver, "_tune", fake_tune(stop_after=None))
    second = no_ray.run_sweep(sweep, tracking_uri=uri, console=console, out_dir=tmp_path)
    assert not second.interrupted and second.logged == 8 and second.parent_run_id == first.parent_run_id
    third = no_ray.run_sweep(sweep, tracking_uri=uri, console=console, out_dir=tmp_path)
    assert third.logged == 0 and third.parent_run_id == first.parent_run_id
    client = store(uri)
    runs = client.search_runs([first.experiment_id], max_results=100)
    parents = role(runs, "parent")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one parent: continued, never an empty one
    assert [m.value for m in client.get_metric_history(parents[0].info.run_id, "to_run")] == [16, 8]
    kids = role(runs, "trial", "FINISHED")
    assert len(kids) == 16 and {r.data.tags["mlflow.parentRunId"] for r in kids} == {first.parent_run_id}
    assert max(Counter(r.data.tags["orchestrator.trial_id"] for r in kids).values()) == 1

    tags = client.get_experiment(first.experiment_id).tags
    view = json.loads(tags["mlflow.sharedViewState.causal-atlas"])
    assert view["searchFilter"] == "tags.`orchestrator.role` = 'trial'"
    assert view["orderByKey"] == "metrics.`ld_delta`"  # not the start time: the UI lists the points flat
    assert view["selectedColumns"][:5] == [f"params.`{a}`" for a in ("seed", "family", "layer", "strength",
                                                                      "vector_type")]
    assert "metrics.`ld_delta`" in view["selectedColumns"] and tags["mlflow.experimentKind"] == \
        "custom_model_development"

    for fmt in ("csv", "parquet"):
        out = tmp_path / f"cont.{fmt}"
        code, said, err = run_main(monkeypatch, capsys, "export", "cont", "--format", fmt, "--out", str(out),
                                   "--tracking-uri", uri)
        assert code == 0 and f"{out}: 16 grid points" in said, err
        frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
        assert len(frame) == 16 and set(frame["run_id"]) == {r.info.run_id for r in kids}
        for run in kids:
            row = frame[frame["run_id"] == run.info.run_id].iloc[0]
            assert row["trial_id"] == run.data.tags["orchestrator.trial_id"]
            assert {k: str(row[k]) for k in run.data.params} == run.data.params
            assert {k: row[k] for k in run.data.metrics} == pytest.approx(run.data.metrics)


def test_export_of_an_unknown_sweep_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.db").touch()
    code, _, err = run_main(monkeypatch, capsys, "export", "nope", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert code == 2 and err.startswith("error: SWEEP: no sweep named 'nope'") and len(err.splitlines()) == 1, err


# --- figures readable at 100 % ---------------------------------------------------------------------------------------

def steering_cells(outlier: float = 9.0) -> pd.DataFrame:
    rows = []
    for vtype, scale in (("mean_diff", 2.0), ("pca", 1.5), ("probe", 1.0), ("random", 0.1)):
        for layer in (2, 6, 10, 14, 18, 22, 26):
            for s in (-1, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1):
                mean = outlier if (vtype, layer, s) == ("mean_diff", 2, 1) else scale * s * (1 - layer / 30)
                rows.append({"vector_type": vtype, "layer": layer, "strength": s, "mean": mean, "std": 0.05, "n": 3})
    return pd.DataFrame(rows)


def overlaps(boxes) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_the_steering_heatmap_reads_at_100_percent_with_a_robust_colour_scale():
    fig = steering_heatmaps(steering_cells())
    width, height = FigureCanvasAgg(fig).get_width_height()
    assert width <= 1300 and height >= 600  # fits the report's column unscaled; cells ~60 x 45 px
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(panels) == 4
    image = panels[0].images[0]
    assert image.norm.vmax == -image.norm.vmin < 2.5  # the 9.0 outlier does not set the scale
    clipped = [p for p in panels[0].patches if p.get_gid() == "clipped"]
    assert len(clipped) >= 1 and any(t.get_text() == "9.00" and t.get_fontweight() == "bold" for t in panels[0].texts)
    assert min(t.get_fontsize() for t in panels[0].texts if "±" not in t.get_text()) >= 9
    for ax in panels:
        assert not overlaps([t.get_window_extent(renderer) for t in ax.get_xticklabels()])
    assert len(png(fig)) > 0


def test_every_axis_label_of_the_compare_figure_is_inside_the_image():
    profiles = {name: pd.DataFrame({"depth": np.arange(n) / n, "mean": np.hanning(n), "std": 0.1})
                for name, n in (("hub_atlas_qwen05b (qwen2.5-coder-0.5b)", 24), ("b (m)", 28))}
    fig = depth_compare(profiles, {k: 0.3 for k in profiles}, "KL of mean-ablating the layer (family mean)")
    FigureCanvasAgg(fig).draw()
    box = fig.bbox
    for ax in fig.axes:
        label = ax.yaxis.label.get_window_extent()
        assert box.x0 <= label.x0 and label.x1 <= box.x1 and box.y0 <= label.y0 and label.y1 <= box.y1, \
            ax.yaxis.label.get_text()
