"""Bad input: one line naming the field and the reason, exit code 2, and nothing in the MLflow store."""
from __future__ import annotations

import json
import re

import pytest

from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import GOOD, ITEM, ITEM2, bad_input, free_port, jsonl, run_main

CASES = [
    # (id, spec text edit, extra files, field the message must name, words in the reason)
    ("unknown key", GOOD + "n_evals: 3\n", {}, "n_evals", "unknown key; did you mean 'n_eval'?"),
    ("unknown axis", GOOD.replace("  seed: [0]", "  seed: [0]\n  layers: [1]"), {}, "axes.layers",
     "unknown key; did you mean 'layer'?"),
    ("unknown resource", GOOD + "resources: {cpu: 1, gpus: 1}\n", {}, "resources.gpus", "did you mean 'gpu'?"),
    ("unknown key, nothing near", GOOD + "colour: red\n", {}, "colour", "unknown key (known: name, model, kind"),
    ("wrong type", GOOD.replace("n_train: 4", "n_train: many"), {}, "n_train", "valid integer"),
    ("wrong type in an axis", GOOD.replace("[1.0]", "[strong]"), {}, "axes.strength.0", "valid number"),
    ("axes not a mapping", GOOD.split("axes:")[0] + "axes: [seed, layer]\n", {}, "axes", "valid dictionary"),
    ("negative max_failures", GOOD + "max_failures: -1\n", {}, "max_failures", "greater than or equal to 0"),
    ("unsafe yaml tag", GOOD + "x: !!python/object/apply:os.system ['touch pwned']\n", {}, "line 12",
     "not valid YAML"),
    ("tab-indented yaml", GOOD.replace("  seed: [0]", "\tseed: [0]"), {}, "line 7", "not valid YAML"),
    ("unknown model", GOOD.replace("tiny-llama", "tiny-lama"), {}, "model", "unknown model 'tiny-lama'"),
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
     {"mine.jsonl": jsonl(ITEM, ITEM2)}, "axes.family", "mine.jsonl: needs n_train + n_eval = 6 items, has 2"),
]


@pytest.mark.parametrize("spec_text,files,field,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_no_store(tmp_path, monkeypatch, capsys, spec_text, files, field,
                                                           reason):
    err = bad_input(tmp_path, monkeypatch, capsys, spec_text, files)
    assert re.match(r"^error: spec\.yaml: [\w.\- ]+: .+", err), err
    assert f"spec.yaml: {field}:" in err, err
    assert reason in err, err
    assert not (tmp_path / "pwned").exists()  # yaml.safe_load: tags never run code


def test_a_good_spec_loads_and_expands(tmp_path):
    (tmp_path / "spec.yaml").write_text(GOOD)
    sweep = load_sweep(tmp_path / "spec.yaml")
    points = expand(sweep)
    assert len(points) == 3 and len({p.trial_id for p in points}) == 3  # two grid points and the 4-shot baseline
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
    assert len(sweep.parts[0].splits[("mine", 0)].train) == 4 and len(sweep.parts[0].splits[("mine", 0)].eval) == 2
    before = [p.trial_id for p in expand(sweep)]
    (tmp_path / "sub" / "mine.jsonl").write_text(jsonl(*reversed(rows)))
    assert [p.trial_id for p in expand(load_sweep(tmp_path / "spec.yaml"))] != before


def test_dry_run_prints_the_grid_and_touches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(GOOD)
    code, out, _ = run_main(monkeypatch, capsys, "sweep", "spec.yaml", "--dry-run")
    assert code == 0 and "3 grid points" in out and "layer=2" in out and "seed=1" in out  # 2 + the 4-shot baseline
    assert not (tmp_path / "mlruns").exists()


def test_a_bare_file_store_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    err = bad_input(tmp_path, monkeypatch, capsys, GOOD, args=("--tracking-uri", "mlruns"))
    assert "error: --tracking-uri: 'mlruns' is a bare file store" in err


# --- bad model folders: caught while validating, before any actor loads weights ------------------------------------

@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A .bin-only folder (a pickle that would leave a mark if loaded), one that needs its own code, and two whose
    safetensors are damaged (cut short as an interrupted copy leaves it; not safetensors at all)."""
    import pickle

    import torch
    from safetensors.torch import save_file

    from interventions.models import _tiny

    root = tmp_path_factory.mktemp("models")
    config, tokenizer = _tiny("llama", weights=False)
    for name in ("binonly", "remote", "truncated", "garbage"):
        config.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    weights = {"embed": torch.randn(64, 64), "norm": torch.ones(64)}
    save_file(weights, root / "truncated" / "model.safetensors")
    whole = (root / "truncated" / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(whole[:-100])
    (root / "garbage" / "model.safetensors").write_bytes(b"\x0c\x00\x00\x00\x00\x00\x00\x00not a header")

    class Mark:
        def __reduce__(self):
            return (open, (str(root / "UNPICKLED"), "w"))

    (root / "binonly" / "pytorch_model.bin").write_bytes(pickle.dumps(Mark()))
    remote = json.loads((root / "remote" / "config.json").read_text())
    remote.update(model_type="atlas_custom", auto_map={"AutoConfig": "configuration_atlas.AtlasConfig",
                                                       "AutoModelForCausalLM": "modeling_atlas.AtlasModel"})
    (root / "remote" / "config.json").write_text(json.dumps(remote))
    (root / "remote" / "configuration_atlas.py").write_text(f"open({str(root / 'RAN_REMOTE_CODE')!r}, 'w')\n")
    save_file(weights, root / "remote" / "model.safetensors")  # never loaded while validating
    return root


MODEL_CASES = [
    ("missing folder", "./models/none", "no such model folder './models/none'"),
    ("missing absolute folder", "/nonexistent/atlas/model", "no such model folder"),
    (".bin only", "{root}/binonly", "has no *.safetensors weights"),
    ("needs trust_remote_code", "{root}/remote", "set trust_remote_code: true in the spec only if you trust it"),
    ("truncated safetensors", "{root}/truncated", "model.safetensors is damaged (its header describes 16784 bytes, "
     "the file has 16684); copy or save it again"),
    ("not safetensors", "{root}/garbage", "model.safetensors is damaged (its header is not safetensors)"),
]


@pytest.mark.parametrize("model,reason", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_folder_is_one_line_exit_2(tmp_path, monkeypatch, capsys, model_folders, model, reason):
    err = bad_input(tmp_path, monkeypatch, capsys, GOOD.replace("tiny-llama", model.format(root=model_folders)))
    assert err.startswith("error: spec.yaml: model: ") and reason in err, err
    assert not (model_folders / "UNPICKLED").exists() and not (model_folders / "RAN_REMOTE_CODE").exists()


# --- bad flags and unreachable services: one line naming the flag, exit 2, quickly, nothing written ------------------

FLAG_CASES = [
    # (id, extra arguments, environment, how the message starts after "error: " (it names the flag), words in the
    # reason)
    ("unreachable tracking server", ["--tracking-uri", "http://127.0.0.1:{port}"], {}, "--tracking-uri",
     "no MLflow server answered at http://127.0.0.1:{port}"),
    ("unreachable tracking server from the environment", [], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"},
     "MLFLOW_TRACKING_URI", "no MLflow server answered"),
    ("sqlite store in a missing folder", ["--tracking-uri", "sqlite:///{tmp}/no/such/dir/m.db"], {},
     "--tracking-uri", "does not exist"),
    ("bare file store", ["--tracking-uri", "./mlruns"], {}, "--tracking-uri", "bare file store"),
    ("address with no cluster", ["--address", "127.0.0.1:{port}"], {}, "--address 127.0.0.1:{port}",
     "no Ray cluster answered"),
    ("address that is not host:port", ["--address", "my-cluster"], {}, "--address my-cluster", "host:port"),
    ("grid larger than --max-trials", ["--max-trials", "1"], {}, "--max-trials",
     "the grid has 3 points, more than --max-trials 1; pass --yes"),
    ("--max-trials of 0", ["--max-trials", "0"], {}, "Invalid value for '--max-trials'", "0 is not in the range x>=1"),
    ("misspelt flag", ["--resum"], {}, "No such option '--resum'", "Did you mean"),
    ("--yes lets a large grid through to the next check", ["--max-trials", "1", "--yes", "--tracking-uri",
     "http://127.0.0.1:{port}"], {}, "--tracking-uri", "no MLflow server answered"),
]


@pytest.mark.parametrize("args,env,flag,reason", [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_bad_flag_is_one_line_exit_2_fast_and_writes_nothing(tmp_path, monkeypatch, capsys, args, env, flag,
                                                             reason):
    import time

    port = free_port()  # nothing listens there

    def fill(text: str) -> str:
        return text.format(port=port, tmp=tmp_path)

    start = time.monotonic()
    err = bad_input(tmp_path, monkeypatch, capsys, GOOD, args=tuple(map(fill, args)),
                    env={k: fill(v) for k, v in env.items()})
    assert err.startswith(f"error: {fill(flag)}"), err
    assert fill(reason) in err, err
    assert time.monotonic() - start < 20  # neither MLflow's HTTP retries nor Ray's GCS wait (minutes each)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no store, no folder, nothing


def test_a_missing_spec_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "sweep", "nope.yaml")
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope.yaml'}: no such spec file"
    assert not (tmp_path / "mlruns").exists()


# --- secure defaults ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host,warned", [(None, False), ("127.0.0.1", False), ("localhost", False), ("::1", False),
                                         ("0.0.0.0", True), ("192.168.1.20", True)])
def test_ui_binds_loopback_unless_told_and_warns_when_not(tmp_path, monkeypatch, capsys, host, warned):
    from orchestrator import ui

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    served = []
    monkeypatch.setattr(ui, "serve_ui", lambda uri, h, port, **kw: served.append(h) or 0)
    code, _, err = run_main(monkeypatch, capsys, "ui", *(["--host", host] if host else []))
    assert code == 0 and served == [host or "127.0.0.1"]
    assert ("warning: --host" in err and "not a loopback address" in err) == warned, err


def test_no_code_path_unpickles_user_files_or_runs_their_code():
    """Static guard: yaml.safe_load only; no pickle/torch.load of user files; trust_remote_code only from the spec."""
    from tests.conftest import REPO

    packages = ("orchestrator", "interventions", "adapters")
    sources = {p: p.read_text() for d in packages for p in (REPO / d).rglob("*.py")}
    for path, text in sources.items():
        for banned in ("yaml.load(", "yaml.unsafe_load", "pickle.load", "torch.load(", "trust_remote_code=True",
                       "use_safetensors=False", "weights_only=False"):
            assert banned not in text, f"{path.name}: {banned}"
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), f"{path.name}: eval/exec"
    assert "use_safetensors=True" in sources[REPO / "interventions" / "models.py"]
    from orchestrator.spec import SweepSpec

    assert SweepSpec.model_fields["trust_remote_code"].default is False
