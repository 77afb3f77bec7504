"""The `precision` axis (issue 25 item 2): float dtypes and weight-only int8 / nf4 (interventions/precision.py),
validated before anything starts, part of trial ids, one (model, precision) per actor, and the summaries that say
whether the hub and the best steering cell move across precisions."""
from __future__ import annotations

import importlib.util
from collections import defaultdict

import pandas as pd
import pytest
import torch

from interventions import models
from interventions.context import FamilyRun, TrialContext
from interventions.precision import QuantisedLinear
from interventions.skipping import skip_trial
from orchestrator.grid import axis_order, expand
from orchestrator.report.hubs import hubs_across_precisions
from orchestrator.report.sections import SECTIONS
from orchestrator.report.sections.steering import best_cells_across
from orchestrator.spec import load_sweep
from tests.conftest import bad_input, children, spec, split, sweep_runs, swept
from tests.test_length import OLD_HASH, OLD_IDS, OLD_SPEC

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
ABLATE = dict(layer=[0, 2], component=["layer"], method=["mean"])


def _sweep(tmp_path, text: str):
    (tmp_path / "spec.yaml").write_text(text)
    return load_sweep(tmp_path / "spec.yaml")


def test_a_spec_without_the_axis_keeps_its_trial_ids(tmp_path):
    sweep = _sweep(tmp_path, spec("steering", "old", **OLD_SPEC))
    assert [p.trial_id for p in expand(sweep)] == OLD_IDS and sweep.spec_hash == OLD_HASH
    assert sweep.precisions == ["float32"] and "precision" not in axis_order(sweep)


def test_precision_reaches_points_trial_ids_and_the_order(tmp_path):
    sweep = _sweep(tmp_path, spec("steering", "old", **OLD_SPEC, precision=["float32", "bfloat16"]))
    points = expand(sweep)
    assert len(points) == 2 * len(OLD_IDS) and axis_order(sweep)[0] == "precision"
    assert [p.values["precision"] for p in points] == ["float32"] * 12 + ["bfloat16"] * 12  # outermost: per actor
    ids = [p.trial_id for p in points]
    assert len(set(ids)) == len(ids) and not set(ids) & set(OLD_IDS)
    assert ids == [p.trial_id for p in expand(_sweep(tmp_path, spec("steering", "old", **OLD_SPEC,
                                                                     precision=["float32", "bfloat16"])))]


def test_precisions_the_device_cannot_run_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    line = bad_input(tmp_path, monkeypatch, capsys, spec("ablation", **ABLATE, precision=["float32", "int3"]))
    assert "axes.precision.1: unknown precision 'int3'" in line
    line = bad_input(tmp_path, monkeypatch, capsys, spec("ablation", **ABLATE, precision=["int4"]))
    assert "axes.precision.0: int4: no int4 kernel runs the atlas here" in line and "use nf4" in line
    line = bad_input(tmp_path, monkeypatch, capsys, spec("ablation", **ABLATE, precision=["int8", "int8"]))
    assert "axes.precision: 'int8' is listed twice" in line
    line = bad_input(tmp_path, monkeypatch, capsys, spec("ablation", **ABLATE, precision=["int8"],
                                                         extra={"dtype": "bfloat16"}))
    assert "axes.precision: give the precisions either here or as the top-level dtype, not both" in line
    line = bad_input(tmp_path, monkeypatch, capsys, spec("ablation", **ABLATE, precision="int8"))
    assert "axes.precision: a list of precisions" in line
    line = bad_input(tmp_path, monkeypatch, capsys, spec("adapter", operation=["train"], precision=["float32", "nf4"]))
    assert "axes.precision.1: nf4: the adapter kind puts LoRA layers (peft) on the linear maps" in line

    def no_half(dtype, device):  # a CPU whose torch lacks float16 kernels
        if dtype == torch.float16:
            raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')

    monkeypatch.setattr(models, "_probe", no_half)
    line = bad_input(tmp_path, monkeypatch, capsys, spec("ablation", **ABLATE, precision=["float32", "float16"]))
    assert "axes.precision.1: float16 cannot run on cpu here" in line and "Half" in line
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # not installed
    line = bad_input(tmp_path, monkeypatch, capsys, spec("ablation", **ABLATE, precision=["nf4"]))
    assert "axes.precision.0: nf4 needs bitsandbytes" in line


def test_a_bfloat16_trial_matches_an_independent_bfloat16_forward():
    """skip layer 1 on tiny-llama in bfloat16: the trial's KL equals one computed from the seeded float32 build cast
    to bfloat16 by hand, prompt by prompt, the skip done by a hook; and differs from the float32 trial's."""
    kls = {}
    for dtype in ("float32", "bfloat16"):
        model = models.load("tiny-llama", dtype=dtype)
        run = FamilyRun(model, split(model))
        kls[dtype] = skip_trial(TrialContext(model, 0, run, [], True, {}), skip=[1])["kl"]
    assert model.dtype == torch.bfloat16
    module, tokenizer = models.MODELS.get("tiny-llama")(True)
    module = module.to(torch.bfloat16).eval()
    mine = []
    for item in split(model).eval:
        ids = torch.tensor([tokenizer(item.prompt)["input_ids"]])
        with torch.no_grad():
            clean = module(input_ids=ids).logits[0, -1].float()
            hook = module.model.layers[1].register_forward_hook(lambda m, a, k, out: a[0],
                                                                with_kwargs=True)
            try:
                skipped = module(input_ids=ids).logits[0, -1].float()
            finally:
                hook.remove()
        p, q = clean.log_softmax(-1), skipped.log_softmax(-1)
        mine.append(float((p.exp() * (p - q)).sum()))
    want = sum(mine) / len(mine)
    assert kls["bfloat16"] == pytest.approx(want, rel=1e-4)
    assert abs(kls["bfloat16"] - kls["float32"]) > 10 * abs(kls["bfloat16"] - want)


def _logits(module, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer("The opposite of hot is cold, the opposite of up is")["input_ids"]])
    with torch.no_grad():
        return module(input_ids=ids).logits[0].float()


def test_int8_weights_are_rounded_per_row_and_the_logits_stay_close():
    """load(dtype=int8) equals the float32 model with every decoder linear weight rounded by hand (per output row,
    absmax to 127), keeps activations float32, and moves the logits a little."""
    model = models.load("tiny-llama", dtype="int8")
    quantised = [m for m in model.module.modules() if isinstance(m, QuantisedLinear)]
    assert len(quantised) == 4 * 7 and all(m.stored.dtype == torch.int8 for m in quantised)
    assert type(model.module.lm_head) is torch.nn.Linear and model.dtype == torch.float32
    ref, tokenizer = models.MODELS.get("tiny-llama")(True)
    rounded, _ = models.MODELS.get("tiny-llama")(True)
    for name, linear in rounded.named_modules():
        if isinstance(linear, torch.nn.Linear) and ".layers." in name:
            w = linear.weight.data
            step = w.abs().max(dim=1, keepdim=True).values / 127
            linear.weight.data = (w / step).round() * step
    got, want, float32 = (_logits(m, tokenizer) for m in (model.module, rounded, ref))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    moved = (got - float32).abs().max()
    assert 0 < moved < 0.05
    x = model.module.get_input_embeddings()(torch.tensor([[5, 6, 7]])).detach().requires_grad_(True)
    with torch.enable_grad():  # attribution and adapters differentiate through the quantised linears
        (grad,) = torch.autograd.grad(model.module(inputs_embeds=x).logits.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.skipif(not HAS_BNB, reason="nf4 needs bitsandbytes (pip install 'causal-atlas[quant]')")
def test_nf4_weights_hold_four_bits_and_match_bitsandbytes_round_trip():
    from bitsandbytes import functional

    model = models.load("tiny-llama", dtype="nf4")
    ref, tokenizer = models.MODELS.get("tiny-llama")(True)
    q_proj = model.module.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, QuantisedLinear) and q_proj.stored.numel() == 64 * 64 // 2  # two weights a byte
    w = ref.model.layers[0].self_attn.q_proj.weight.data
    packed, state = functional.quantize_4bit(w.contiguous(), blocksize=64, quant_type="nf4")
    torch.testing.assert_close(q_proj.weight_value(), functional.dequantize_4bit(packed, state), atol=0, rtol=0)
    levels = torch.unique((q_proj.weight_value()[0, :64] / w[0, :64].abs().max()).round(decimals=4))
    assert len(levels) <= 16  # a block of 64 weights on the 16 NormalFloat levels
    got, float32 = _logits(model.module, tokenizer), _logits(ref, tokenizer)
    assert 0 < (got - float32).abs().max() < 0.5


def _hub_rows(hubs: dict[tuple[str, str], int], seeds=(0, 1, 2), layers=range(4)) -> pd.DataFrame:
    return pd.DataFrame([{"family": f, "precision": p, "seed": s, "layer": layer, "component": "layer",
                          "method": "mean", "kl": 1.0 + (layer == hub) + 0.01 * s}
                         for (f, p), hub in hubs.items() for s in seeds for layer in layers])


def test_the_summary_says_per_precision_whether_each_familys_hub_moves():
    frame = _hub_rows({("copying", "float32"): 2, ("copying", "int8"): 2, ("copying", "nf4"): 2,
                       ("antonyms", "float32"): 1, ("antonyms", "int8"): 1, ("antonyms", "nf4"): 3})
    out = hubs_across_precisions(frame)
    moves = out.tables["hubs_by_precision"].set_index("precision")
    assert list(moves.index) == ["float32", "int8", "nf4"]  # the first is the reference
    assert moves.loc["nf4", "hub_per_family"] == "copying:L2, antonyms:L3"
    assert list(moves["moves"]) == [False, False, True] and moves.loc["nf4", "moved"] == "antonyms"
    families = out.tables["hubs_across_precisions"].set_index("family")
    assert families.loc["antonyms", "verdict"] == "hub moves across precisions"
    assert out.metrics["hub_stable_across_precisions"] == 0.5
    summary = SECTIONS.get("ablation").summary(frame)  # per precision, then the moves tables
    assert summary.tables["hubs_by_precision"].equals(out.tables["hubs_by_precision"])
    assert summary.metrics["precision_nf4/hub_layer_mode"] in (2, 3)
    one = _hub_rows({("copying", "float32"): 2})
    assert "hubs_by_precision" not in SECTIONS.get("ablation").summary(one).tables


def test_the_steering_summary_says_whether_the_best_cell_moves():
    rows = []
    for precision, best in (("float32", (2, 4.0)), ("bfloat16", (2, 4.0)), ("int8", (0, 4.0))):
        for seed in (0, 1):
            for layer in (0, 2):
                for strength in (1.0, 4.0):
                    for vtype in ("mean_diff", "random"):
                        effect = 3.0 if (layer, strength) == best and vtype == "mean_diff" else 0.5
                        rows.append({"precision": precision, "family": "antonyms", "seed": seed, "layer": layer,
                                     "strength": strength, "vector_type": vtype, "ld_delta": effect + 0.01 * seed})
    frame = pd.DataFrame(rows)
    out = best_cells_across("precision")(frame)
    table = out.tables["best_cell_by_precision"].set_index("precision")
    assert table.loc["float32", "best_cell_per_family"] == "antonyms:mean_diff@L2x4"
    assert table.loc["int8", "best_cell_per_family"] == "antonyms:mean_diff@L0x4"
    assert list(table["moves"]) == [False, False, True]
    assert out.metrics["best_cell_stable_across_precision"] == 0.0
    assert SECTIONS.get("steering").summary(frame).tables["best_cell_by_precision"].equals(
        out.tables["best_cell_by_precision"])
    assert not SECTIONS.get("steering").summary(frame[frame["precision"] == "int8"]).tables  # one precision: none


@pytest.mark.slow
def test_a_two_precision_sweep_runs_every_point_once_and_reports_the_moves(tmp_path):
    """End to end (Ray, MLflow): one FINISHED run per grid point with its precision as a param, at most actors x
    precisions loads, and hubs_by_precision equal to the hub recomputed from the child runs."""
    text = spec("ablation", "prec", **{**ABLATE, "layer": [0, 1, 2, 3]}, family=["antonyms", "copying"],
                seed=[0, 1], precision=["float32", "int8"], extra={"resources": {"cpu": 1, "gpu": 0}})
    swept(tmp_path, "prec", text)
    sweep = _sweep(tmp_path, text)
    grid = {p.trial_id: p for p in expand(sweep)}
    kids = children(sweep_runs(tmp_path, "prec"))
    assert sorted(r.data.tags["orchestrator.trial_id"] for r in kids) == sorted(grid) and len(grid) == 32
    rows, loads = [], defaultdict(set)
    for run in kids:
        point = grid[run.data.tags["orchestrator.trial_id"]]
        assert run.data.params["precision"] == point.values["precision"]
        rows.append({**point.values, "kl": run.data.metrics["kl"]})
        loads[run.data.tags["orchestrator.worker"]].add(int(run.data.tags["orchestrator.model_loads"]))
    assert all(max(v) <= 2 for v in loads.values()) and sum(max(v) for v in loads.values()) <= 2 * 2
    frame = pd.DataFrame(rows)
    moves = pd.read_parquet(tmp_path / "mlruns" / "reports" / "prec" / "hubs_by_precision.parquet")
    assert list(moves["precision"]) == ["float32", "int8"]
    for precision, mine in frame.groupby("precision"):
        hubs = []
        for family, own in mine.groupby("family", sort=False):
            per_seed = own.loc[own.groupby("seed")["kl"].idxmax()]["layer"]  # one family: its own hub per seed
            counts = per_seed.value_counts()
            hubs.append(f"{family}:L{min(counts.index[counts == counts.max()])}")
        row = moves[moves["precision"] == precision].iloc[0]
        assert sorted(row["hub_per_family"].split(", ")) == sorted(hubs)
