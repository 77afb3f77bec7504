"""One spec, many models: the `model` axis resolved per model (layers by depth, items per tokenizer), validated
before anything starts, and run through the CLI with every grid point once and loads <= actors x models."""
from __future__ import annotations

from collections import Counter, defaultdict

import pandas as pd
import pytest
import torch
import yaml

from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import bad_input, children, cli, jsonl, sweep_runs, swept

ODD_WORDS = ("zyxwvut", "qqqpppx")  # one token each in the deep model's tokenizer only


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> str:
    """A 6-layer random Llama saved as a safetensors folder (the tiny models have 4 layers), whose tokenizer has
    two words of its own."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from interventions.models import embedded_folder

    folder = tmp_path_factory.mktemp("deep") / "deep-llama"
    tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
    tokenizer.add_tokens(list(ODD_WORDS))
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, tie_word_embeddings=True,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(6)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def two_models(deep: str, name: str = "two", *, layer=None, family=("antonyms",), seeds=(0, 1), **top) -> str:
    axes = {"model": ["tiny-qwen2", deep], "seed": list(seeds), "family": list(family),
            "layer": layer if layer is not None else [{"depth": [0.0, 0.5, 0.9]}], "component": ["layer"],
            "method": ["mean"]}
    return yaml.safe_dump({"name": name, "kind": "ablation", "n_train": 4, "n_eval": 3, **top, "axes": axes},
                          sort_keys=False)


def test_depth_and_all_resolve_per_model_and_each_point_names_its_model(tmp_path, deep):
    (tmp_path / "s.yaml").write_text(two_models(deep))
    sweep = load_sweep(tmp_path / "s.yaml")
    layers = {part.name: part.axes["layer"] for part in sweep.parts}
    assert layers == {"tiny-qwen2": [0, 2, 3], deep: [0, 3, 5]}  # 0.9 x 4 = 3.6 -> 4, clamped to 3; 0.9 x 6 -> 5
    points = expand(sweep)
    assert len(points) == 2 * 3 * 2 and len({p.trial_id for p in points}) == len(points)
    assert [p.values["model"] for p in points] == ["tiny-qwen2"] * 6 + [deep] * 6  # model-ordered: actors keep one
    assert {(p.values["model"], p.values["layer"]) for p in points} == {
        (m, layer) for m, ls in layers.items() for layer in ls}
    (tmp_path / "all.yaml").write_text(two_models(deep, layer=["all"]))
    assert [len(p.axes["layer"]) for p in load_sweep(tmp_path / "all.yaml").parts] == [4, 6]


def test_trial_ids_of_a_model_axis_are_unique_and_hold_the_model_as_a_point_value(tmp_path, deep):
    """A point of a model axis has the model among its values: its id differs from the one-model spec's point."""
    (tmp_path / "s.yaml").write_text(two_models(deep, seeds=(0,)))
    both = {p.trial_id for p in expand(load_sweep(tmp_path / "s.yaml"))}
    text = yaml.safe_load(two_models(deep, "one", seeds=(0,)))
    text["axes"].pop("model")
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**text, "model": "tiny-qwen2"}))
    one = {p.trial_id for p in expand(load_sweep(tmp_path / "one.yaml"))}
    assert len(one) == 3 and not one & both  # the model axis value is part of the point: ids differ from a one-model
    assert len(both) == 6


def test_a_family_that_does_not_tokenize_for_one_model_is_left_out_for_that_model_only(tmp_path, deep, capsys):
    rows = [{"prompt": f"Say it {i}:", "target": ODD_WORDS[0], "distractor": ODD_WORDS[1]} for i in range(8)]
    (tmp_path / "odd.jsonl").write_text(jsonl(*rows))
    (tmp_path / "s.yaml").write_text(two_models(deep, family=["antonyms", "odd.jsonl"], seeds=(0,)))
    sweep = load_sweep(tmp_path / "s.yaml")
    assert {part.name: part.axes["family"] for part in sweep.parts} == {
        "tiny-qwen2": ["antonyms"], deep: ["antonyms", "odd"]}
    assert sweep.axes["family"] == ["antonyms", "odd"]
    said = [w for w in sweep.warnings if "odd" in w]
    assert len(said) == 1 and "tiny-qwen2 only" in said[0] and "zyxwvut" in said[0]
    points = expand(sweep)
    assert Counter((p.values["model"], p.values["family"]) for p in points) == {
        ("tiny-qwen2", "antonyms"): 3, (deep, "antonyms"): 3, (deep, "odd"): 3}
    # a model for which no family is left is an error naming it
    (tmp_path / "t.yaml").write_text(two_models(deep, family=["odd.jsonl"], seeds=(0,)))
    with pytest.raises(Exception, match=r"axes.family: .*tiny-qwen2.*no family is left"):
        load_sweep(tmp_path / "t.yaml")


@pytest.mark.parametrize("change, expected", [
    (lambda s: {**s, "model": "tiny-llama"}, "spec.yaml: axes.model: give the models either here or as the top-level "
                                              "model, not both"),
    (lambda s: {**s, "axes": {**s["axes"], "model": ["tiny-qwen2", "tiny-nosuch"]}}, "spec.yaml: axes.model.1: "),
    (lambda s: {**s, "axes": {**s["axes"], "model": ["tiny-qwen2", "tiny-qwen2"]}},
     "spec.yaml: axes.model: 'tiny-qwen2' is listed twice"),
    (lambda s: {**s, "axes": {**s["axes"], "layer": [5]}}, "spec.yaml: axes.layer.0: layer 5 is outside 0..3 "
                                                          "(tiny-qwen2 has 4 layers)"),
    (lambda s: {**s, "resources": {"models": {"tiny-qwen2": {"memory": 3}}}},
     "spec.yaml: resources.models.tiny-qwen2.memory: unknown key; did you mean 'memory_gb'?"),
])
def test_bad_model_axes_get_one_line_naming_the_field(tmp_path, monkeypatch, capsys, deep, change, expected):
    text = change(yaml.safe_load(two_models(deep)))
    line = bad_input(tmp_path, monkeypatch, capsys, yaml.safe_dump(text)).removeprefix("error: ")
    assert line.startswith(expected), line


def test_per_model_resources_override_the_sweeps(tmp_path, deep):
    from orchestrator.cost import PROCESS_BYTES, WEIGHTS_FACTOR, WORKING_FACTOR, actor_bytes

    (tmp_path / "s.yaml").write_text(two_models(deep, resources={"cpu": 1, "models": {deep: {"memory_gb": 2}}}))
    sweep = load_sweep(tmp_path / "s.yaml")
    small, big = sweep.parts
    assert (big.resources.cpu, big.resources.memory_gb, small.resources.memory_gb) == (1, 2, None)
    assert actor_bytes(sweep, big) == 2 * 2**30  # as given
    weights = 4 * small.model.n_params  # float32
    footprint = PROCESS_BYTES + weights * (WEIGHTS_FACTOR + WORKING_FACTOR)  # a small model's working set: 1.5 x
    assert actor_bytes(sweep, small) == int(footprint)
    assert small.model.n_params == sum(p.numel() for p in _load("tiny-qwen2").parameters())


def _load(name: str):
    from interventions.models import load

    return load(name).module


@pytest.mark.slow
def test_a_two_model_sweep_through_the_cli_records_every_point_once_grouped_per_model(tmp_path, deep):
    folder, done = swept(tmp_path, "two", two_models(deep, resources={"cpu": 1}))
    sweep = load_sweep(folder / "two.yaml")
    grid = {p.trial_id: p for p in expand(sweep)}
    kids = children(sweep_runs(folder, "two"))
    ids = Counter(r.data.tags["orchestrator.trial_id"] for r in kids)
    assert set(ids) == set(grid) and len(kids) == len(grid) == 12  # each grid point once
    n_layers = {"tiny-qwen2": 4, deep: 6}
    rows = []
    for run in kids:
        point = grid[run.data.tags["orchestrator.trial_id"]]
        assert run.data.params["model"] == point.values["model"] and run.data.params["layer"] == str(
            point.values["layer"])
        assert run.data.metrics["depth"] == pytest.approx(point.values["layer"] / n_layers[point.values["model"]])
        rows.append({**point.values, "kl": run.data.metrics["kl"]})
    assert {(r["model"], r["layer"]) for r in rows} == {("tiny-qwen2", x) for x in (0, 2, 3)} | {
        (deep, x) for x in (0, 3, 5)}
    # the cross-seed table: one row per (model, layer), equal to a per-model recomputation from the child runs
    table = pd.read_parquet(folder / "mlruns" / "reports" / "two" / "aggregate.parquet")
    mine = pd.DataFrame(rows).groupby(["model", "layer"])["kl"].agg(["mean", "std"])
    assert len(table) == len(mine) == 6
    for _, row in table.iterrows():
        assert row["kl_mean"] == pytest.approx(mine.loc[(row["model"], row["layer"]), "mean"])
        assert row["kl_std"] == pytest.approx(mine.loc[(row["model"], row["layer"]), "std"])
    # the hubs: one row per model, each the hub recomputed from that model's child runs (argmax of kl per seed)
    hubs = pd.read_parquet(folder / "mlruns" / "reports" / "two" / "hubs.parquet").set_index("model")
    frame = pd.DataFrame(rows)
    for model, one in frame.groupby("model"):
        per_seed = one.loc[one.groupby("seed")["kl"].idxmax()].set_index("seed")["layer"]
        assert hubs.loc[model, "hub_per_seed"] == ",".join(f"{s}:{layer}" for s, layer in per_seed.items())
    # the report: the models side by side on the depth axis, then each model's own section
    done = cli(folder, "report", "two")
    assert done.returncode == 0, done.stdout + done.stderr
    page = (folder / "mlruns" / "reports" / "two" / "report.html").read_text()
    assert "tiny-qwen2 (4 layers)" in page and "deep-llama (6 layers)" in page
    # scheduling: model-ordered packs, so an actor loads each model at most once and the sweep loads at most
    # (actors at once) x models: 2 CPUs / resources.cpu 1 = 2 actors at once
    loads = defaultdict(set)
    for run in kids:
        loads[run.data.tags["orchestrator.worker"]].add(int(run.data.tags["orchestrator.model_loads"]))
    assert all(max(v) <= 2 for v in loads.values()) and sum(max(v) for v in loads.values()) <= 2 * 2
    parent = [r for r in sweep_runs(folder, "two") if r.data.tags.get("orchestrator.role") == "parent"][0]
    assert parent.data.params["model"] == f"tiny-qwen2, {deep}"


def test_an_actor_larger_than_the_clusters_memory_is_refused_naming_the_model(monkeypatch):
    from interventions.registry import AtlasError
    from orchestrator import cluster
    from orchestrator.spec import ActorResources

    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2, "memory": 4 * 2**30})
    cluster.check_resources(ActorResources(), 3 * 2**30, "big")
    with pytest.raises(AtlasError, match=r"^resources.memory_gb: an actor of big asks for 5.0 GiB but the Ray "
                                         r"cluster offers 4.0 GiB"):
        cluster.check_resources(ActorResources(), 5 * 2**30, "big")
