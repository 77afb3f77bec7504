"""Which positions an ablation touches (issue 18 item 5): the `positions` axis, `position_mean`, and the
first-position norm ratio, each against an independent computation (tests/oracle.py: one prompt at a time, hooks)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from interventions.ablation import ablated_logits, first_norm_ratio, touched
from interventions.architectures import part
from interventions.components import Site
from interventions.hooks import count_hooks
from interventions.kinds import run_kind, run_pack
from orchestrator.grid import expand, packs
from orchestrator.report.hubs import hub_table, layer_profiles, sink_writers
from orchestrator.spec import load_sweep
from tests.conftest import bad_input, context, spec
from tests.oracle import SEED, expected, sites


def test_touched_positions_on_a_left_padded_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert touched(mask).tolist() == mask.bool().tolist()
    assert touched(mask, "last").int().tolist() == [[0, 0, 0, 0, 1]] * 3
    assert touched(mask, "all_but_first").int().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("positions", ["last", "all_but_first"])
@pytest.mark.parametrize("method", ["zero", "mean", "position_mean", "resample"])
def test_positions_match_hand_hooks(tiny_model, method, positions):
    ctx = context(tiny_model, "copying", seed=0, n_train=6, n_eval=5)  # prompts of several lengths: padding
    for site in sites(1):
        got = ablated_logits(ctx.family, SEED, site, method, positions)
        want = expected(tiny_model, ctx.family, site, method, positions)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=f"{site} {method} {positions}")
    assert count_hooks(tiny_model.module) == 0


def test_positions_change_the_result_and_all_is_the_default(tiny_llama):
    run = context(tiny_llama, "copying", seed=0, n_train=6, n_eval=5).family
    site = Site("mlp", 1)
    every = ablated_logits(run, SEED, site, "mean")
    assert torch.equal(every, ablated_logits(run, SEED, site, "mean", "all"))
    assert not torch.allclose(every, ablated_logits(run, SEED, site, "mean", "all_but_first"))


@torch.no_grad()
def test_first_norm_ratio_equals_a_hand_computation(tiny_llama):
    run = context(tiny_llama, "copying", seed=0, n_train=4, n_eval=5).family
    seen = {}

    def keep(_module, _inputs, output):
        seen["out"] = output[0] if isinstance(output, tuple) else output

    for layer in range(4):
        ratios = []
        for item in run.split.eval:
            hook = part(tiny_llama.module, tiny_llama.arch.layers)[layer].register_forward_hook(keep)
            try:
                ids = tiny_llama.tokenizer(item.prompt, return_tensors="pt")["input_ids"]
                tiny_llama.module(input_ids=ids)
            finally:
                hook.remove()
            norms = seen["out"][0].double().norm(dim=-1).numpy()
            if len(norms) >= 2:
                ratios.append(norms[0] / np.median(norms[1:]))
        assert first_norm_ratio(run, layer) == pytest.approx(np.mean(ratios), rel=1e-4)


def test_every_ablation_child_logs_its_layers_ratio_and_depth(tiny_llama):
    ctx = context(tiny_llama, n_train=4, n_eval=3)
    out = run_kind("ablation", ctx, {"component": "attn", "layer": 2, "method": "zero", "positions": "last"}).metrics
    assert out["first_norm_ratio"] == first_norm_ratio(ctx.family, 2) and out["depth"] == 0.5


def test_points_differing_in_positions_share_a_pack_and_equal_separate_runs(tmp_path, tiny_llama):
    text = spec("ablation", component=["layer"], layer=[1], method=["mean", "position_mean"],
                positions=["all", "last", "all_but_first"])
    (tmp_path / "s.yaml").write_text(text)
    sweep = load_sweep(tmp_path / "s.yaml")
    points = expand(sweep)
    assert len(points) == 6 and len({p.trial_id for p in points}) == 6
    assert [len(p) for p in packs(sweep, points)] == [6]
    ctx = context(tiny_llama, n_train=4, n_eval=2)
    own = [{k: v for k, v in p.values.items() if k not in ("seed", "family")} for p in points]
    together = run_pack("ablation", ctx, own)
    for point, result in zip(own, together):
        assert result.metrics["kl"] == pytest.approx(run_kind("ablation", ctx, point).metrics["kl"], abs=1e-5)


def test_a_spec_without_positions_keeps_its_trial_ids_and_hash(tmp_path):
    # ids and hash of this spec computed by the code before the positions axis existed (main at b00463b)
    text = spec("ablation", component=["layer", "head"], layer=[0, 3], method=["mean", "zero"], head=[1])
    (tmp_path / "s.yaml").write_text(text)
    sweep = load_sweep(tmp_path / "s.yaml")
    points = expand(sweep)
    assert sweep.spec_hash == "3465b9b279007428" and len(points) == 8
    assert [p.trial_id for p in points][:3] == ["6967bfa2feb45809", "7e2b2182ad99f656", "a91bd92572da7232"]
    assert all("positions" not in p.values for p in points)


def test_positions_shorthand_and_bad_value(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.yaml").write_text(spec("ablation", component=["layer"], layer=[1], method=["mean"],
                                          positions="last"))
    assert load_sweep(tmp_path / "s.yaml").axes["positions"] == ["last"]
    err = bad_input(tmp_path, monkeypatch, capsys, spec("ablation", component=["layer"], layer=[1], method=["mean"],
                                                        positions=["first"]))
    assert err.startswith("error: spec.yaml: axes.positions.0: ") and "'all_but_first'" in err, err


def test_hub_tables_name_the_variant():
    rows = [{"seed": s, "family": "f", "component": "layer", "method": "mean", "positions": pos, "layer": layer,
             "kl": (1.0 if layer == hub else 0.1)}
            for s in (0, 1) for pos, hub in (("all", 2), ("all_but_first", 5)) for layer in range(6)]
    hubs = hub_table(layer_profiles(pd.DataFrame(rows))).set_index("method")["hub_mode"].to_dict()
    assert hubs == {"mean": 2, "mean[all_but_first]": 5}


def test_the_ablation_section_builds_with_positions_and_its_cards_name_the_variant():
    from orchestrator.report.record import SweepRecord
    from orchestrator.report.sections import SECTIONS

    rows = [{"run_id": f"{s}{f}{pos}{layer}", "seed": s, "family": f, "component": "layer", "method": "mean",
             "positions": pos, "layer": layer, "kl": (1.0 if layer == hub else 0.1) + 0.01 * s,
             "first_norm_ratio": [3.0, 300.0, 310.0, 320.0][layer]}
            for s in (0, 1, 2) for f in ("a", "b") for pos, hub in (("all", 1), ("all_but_first", 3))
            for layer in range(4)]
    frame = pd.DataFrame(rows).assign(model="m", kind="ablation")
    record = SweepRecord("t", "ablation", "m", 4, frame, pd.DataFrame(),
                         [c for c in frame if c not in ("model", "kind", "run_id", "kl")])
    built = SECTIONS.get("ablation").build(record)
    claims = " ".join(c.claim for c in built.cards)
    assert "layer/mean: L1 is the hub" in claims and "layer/mean[all_but_first]: L3 is the hub" in claims
    caveats = {c.claim.split(":")[0]: " ".join(c.caveats) for c in built.cards if "is the hub" in c.claim}
    assert "L1 is where the first-position activation is written" in caveats["layer/mean"]
    assert "first-position" not in caveats["layer/mean[all_but_first]"]


def test_sink_writers_are_the_layers_where_the_ratio_jumps():
    frame = pd.DataFrame({"layer": [0, 1, 2, 3, 4, 0], "first_norm_ratio": [1.0, 1.2, 42.0, 108.0, 120.0, 1.4]})
    assert sink_writers(frame) == {2: (1.2, 42.0), 3: (42.0, 108.0)}  # 120 < 2 x 108: carried, not written
    assert sink_writers(frame.drop(columns="first_norm_ratio")) == {}
