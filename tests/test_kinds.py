"""The kind registry: complete on import, every kind takes exactly its axes, and adding a kind is one decorated
function in one file (the toy kind below, declared here and nowhere else, goes through validation, the grid, trials,
the record, the cross-seed table and a report)."""
from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Annotated, ClassVar

import pandas as pd
import pytest
import torch
from pydantic import Field, FiniteFloat
from rich.console import Console

from interventions.kinds import KINDS, CommonAxes, Option, TrialContext, axis, kind, kind_axes, run_pack
from interventions.metrics import mean, top1_correct
from interventions.registry import AtlasError
from orchestrator.grid import expand, packs
from orchestrator.report import write_report
from orchestrator.spec import load_sweep, spec_model
from orchestrator.summary import summarise
from orchestrator.tracking import Tracker
from tests.conftest import REPO, bad_input, spec


class ToyAxes(CommonAxes):
    layer: axis(Annotated[int, Field(ge=0)])
    scale: axis(FiniteFloat)


@kind("toy_norm", axes=ToyAxes, metrics=("resid_norm", "accuracy_clean"), primary="resid_norm",
      shown=("accuracy_clean",))
def toy_norm(ctx: TrialContext, *, layer: int, scale: float) -> dict[str, float]:
    """`scale` times the mean norm of resid_post[layer] at the last position of the eval prompts."""
    run = ctx.family
    return {"resid_norm": scale * float(run.clean_resid(layer)[:, -1].norm(dim=-1).mean()),
            "accuracy_clean": mean(top1_correct(run.clean_logits, run.target))}


BUILTINS = {"ablation", "early_exit", "skip", "steering"}  # declared in interventions/
ABOVE = {"adapter", "cross_model_patch"}  # declared in adapters/, which adds its modules to KINDS itself


def fresh(code: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_the_registry_is_complete_on_import_in_a_fresh_process_and_never_imports_the_floors_above():
    names, above = fresh("import sys; from interventions import KINDS; print(' '.join(KINDS.names())); "
                         "print(sorted({m.split('.')[0] for m in sys.modules} & {'adapters', 'orchestrator'}))")
    assert BUILTINS <= set(names.split()) and not ABOVE & set(names.split()) and above == "[]"


def test_the_orchestrator_reads_the_kinds_of_the_packages_above_interventions_in_a_fresh_process():
    for module in ("orchestrator.spec", "orchestrator.worker", "orchestrator.report"):  # sweeps, actors, reports
        (names,) = fresh(f"import {module}; from interventions import KINDS; print(' '.join(KINDS.names()))")
        assert BUILTINS | ABOVE <= set(names.split()), module


def test_every_kind_takes_exactly_its_axes_as_keywords_or_a_pack():
    assert BUILTINS | ABOVE | {"toy_norm"} <= set(KINDS)
    for name in KINDS.names():
        k = KINDS.get(name)
        params = [p for p in inspect.signature(k.fn).parameters if p != "ctx"]
        if k.pack_axes:
            assert params == ["points"] and set(k.pack_axes) <= set(kind_axes(k)), name
        else:
            assert sorted(params) == sorted(kind_axes(k)), name


def test_every_kind_option_is_a_section_of_the_spec():
    fields = spec_model().model_fields
    for name in KINDS.names():
        k = KINDS.get(name)
        assert k.baseline_copies >= 1, name
        for section, model in k.options.items():
            assert issubclass(model, Option) and model in fields[section].annotation.__args__, (name, section)


def test_a_kind_is_declared_by_keyword_only():
    with pytest.raises(TypeError):
        type(KINDS.get("toy_norm"))("toy", toy_norm, ToyAxes, ("m",), "m")  # positional fields bind nothing


TOY = spec("toy_norm", "toy", n_train=2, n_eval=3, seed=[0, 1], family=["antonyms", "copying"], layer=[1, 3],
           scale=[1.0, 2.0])


def test_a_toy_kind_declared_in_one_file_runs_end_to_end(tmp_path, tiny_llama):
    (tmp_path / "toy.yaml").write_text(TOY)
    sweep = load_sweep(tmp_path / "toy.yaml")
    points = expand(sweep)
    assert len(points) == 2 * 2 * 2 * 2 and sweep.kind.name == "toy_norm"
    assert all(len(pack) == 1 for pack in packs(sweep, points))  # no pack axes: one point per trial
    uri = f"sqlite:///{tmp_path / 'toy.db'}"
    tracker = Tracker(uri, sweep)
    parent = tracker.start_parent(len(points), len(points))
    from interventions.context import FamilyRun

    runs = {key: FamilyRun(tiny_llama, split) for key, split in sweep.parts[0].splits.items()}
    for point in points:  # what each Ray actor does for a trial (orchestrator/worker.py), in this process
        ctx = TrialContext(tiny_llama, point.values["seed"], runs[(point.values["family"], point.values["seed"])])
        (result,) = run_pack("toy_norm", ctx, [point.values])
        tracker.log_trial(parent, point, result.metrics, {})
        split = sweep.parts[0].splits[(point.values["family"], point.values["seed"])]
        want = hand_norm(tiny_llama, split, point.values)
        assert result.metrics["resid_norm"] == pytest.approx(want, rel=1e-5)
    table = summarise(sweep, tracker, points, parent, Console(quiet=True), 20, tmp_path)
    frame = pd.read_parquet(table)
    assert len(frame) == 2 * 2 * 2 and (frame["resid_norm_n"] == 2).all()  # one group per point but the seed
    tracker.end_parent(parent, "FINISHED")
    made = write_report(uri, "toy", tmp_path / "report")
    assert [f.id for f in made.figures] == ["toy_norm_layer"] and made.html.is_file()


def test_a_toy_kind_gets_the_layer_checks_of_every_kind(tmp_path, monkeypatch, capsys):
    err = bad_input(tmp_path, monkeypatch, capsys, TOY.replace("layer: [1, 3]", "layer: [1, 4]"))
    assert err == "error: spec.yaml: axes.layer.1: layer 4 is outside 0..3 (tiny-llama has 4 layers)"


class ToyOffset(Option):
    """The toy_offset kind's own spec section: added to every resid_norm (on by default)."""

    value: float = 0.0
    every_point: ClassVar[bool] = True
    on_by_default: ClassVar[bool] = True

    def check(self, spec) -> None:
        if self.value < 0:
            raise AtlasError(f"value: {self.value} is negative (n_eval is {spec.n_eval})")


@kind("toy_offset", axes=ToyAxes, metrics=("resid_norm",), primary="resid_norm", options={"offset": ToyOffset})
def toy_offset(ctx: TrialContext, *, layer: int, scale: float) -> dict[str, float]:
    norm = float(ctx.family.clean_resid(layer)[:, -1].norm(dim=-1).mean())
    return {"resid_norm": scale * norm + ctx.options["offset"]["value"]}


def test_a_kind_with_an_option_section_is_declared_in_one_file(tmp_path, monkeypatch, capsys):
    """The section is a spec key (validated, defaults filled in, in every trial id when every_point) for the kind
    that declares it, refused for the others, and its checks read the rest of the spec."""
    offset = TOY.replace("toy_norm", "toy_offset")
    (tmp_path / "on.yaml").write_text(offset.replace("axes:", "offset: {value: 2.5}\naxes:"))
    (tmp_path / "default.yaml").write_text(offset)
    on, default = load_sweep(tmp_path / "on.yaml"), load_sweep(tmp_path / "default.yaml")
    assert on.options == on.id_options == {"offset": {"value": 2.5}} and default.options == {"offset": {"value": 0.0}}
    assert on.spec_hash != default.spec_hash and expand(on)[0].trial_id != expand(default)[0].trial_id
    cases = [(offset.replace("axes:", "offset: {valu: 1}\naxes:"), "offset.valu: unknown key; did you mean 'value'?"),
             (offset.replace("axes:", "offset: {value: -1}\naxes:"), "offset.value: -1.0 is negative (n_eval is 3)"),
             (TOY.replace("axes:", "offset: {value: 1}\naxes:"), "offset: only the toy_offset kind reads it, not "
                                                                  "toy_norm")]
    for text, message in cases:
        assert bad_input(tmp_path, monkeypatch, capsys, text) == f"error: spec.yaml: {message}"


def hand_norm(model, split, values: dict) -> float:
    """Independent of the kind: each eval prompt alone through a plain forward with a hook on the layer."""
    seen = []
    layer = model.module.model.layers[values["layer"]]
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            for item in split.eval:
                model.module(input_ids=model.tokenizer(item.prompt, return_tensors="pt")["input_ids"])
    finally:
        handle.remove()
    norms = [float(x[0, -1].norm()) for x in seen]
    return values["scale"] * sum(norms) / len(norms)
