"""Steering as the field evaluates it, against independent computations: the prompting baseline, per-item
reliability, held-out selection, generation metrics, multi-layer steering, vector geometry, saved vectors,
the console table beside the control, and the spec fields that switch these on."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from interventions.context import TrainActs, seeded_generator
from interventions.generation import (
    continuation_nll,
    distinct_n,
    eos_ids,
    greedy,
    neutral_prompts,
    repetition,
    until_eos,
)
from interventions.kinds import KINDS, run_kind
from interventions.reliability import anti_steerable_fraction, bootstrap_ci, cosine, halves, shift_metrics
from interventions.steering import VECTORS, steering_vector, vector_name
from orchestrator.aggregate import aggregate, beside_control, render
from orchestrator.grid import expand
from orchestrator.report.claims import grade
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import SECTIONS
from orchestrator.report.sections.steering import pick_cell
from orchestrator.spec import load_sweep
from orchestrator.sweepfiles import Gathered, vectors_file
from orchestrator.vectors import read
from tests import oracle
from tests.conftest import bad_input, context, spec


def trial(ctx, **point) -> dict[str, float]:
    return run_kind("steering", ctx, point).metrics


# --- the prompting baseline -------------------------------------------------------------------------------------------

def test_prompt_baseline_equals_a_hand_built_k_shot_prompt(tiny_model):
    ctx = context(tiny_model, n_train=8, n_eval=5)
    ctx.options = {"baseline": {"shots": 3}}
    out = trial(ctx, vector_type="prompt")
    tok = tiny_model.tokenizer
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    demos = []
    for j, demo in enumerate(ctx.family.split.train[:3]):  # prompt ids + the target's one id + a newline, each
        demos += tok(demo.prompt, add_special_tokens=j == 0)["input_ids"] + [oracle.token(tiny_model, demo.target)]
        demos += newline
    deltas, hits = [], []
    for item in ctx.family.split.eval:
        ids = demos + tok(item.prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            kshot = tiny_model.module(input_ids=torch.tensor([ids])).logits[0, -1]  # one plain forward, no padding
        zero = oracle.last_logits(tiny_model, item.prompt)
        deltas.append(oracle.logit_diff(tiny_model, kshot, item.target, item.distractor)
                      - oracle.logit_diff(tiny_model, zero, item.target, item.distractor))
        hits.append(float(kshot.argmax() == oracle.token(tiny_model, item.target)))
    assert out["ld_delta"] == pytest.approx(np.mean(deltas), abs=1e-4)
    assert out["ld_delta_median"] == pytest.approx(np.median(deltas), abs=1e-4)
    assert out["accuracy_steered"] == pytest.approx(np.mean(hits))
    assert out["anti_steerable_fraction"] == pytest.approx(np.mean(np.array(deltas) < 0))


def test_no_shots_is_the_zero_shot_prompt(tiny_llama):
    ctx = context(tiny_llama)
    ctx.options = {"baseline": {"shots": 0}}
    out = trial(ctx, vector_type="prompt")
    assert abs(out["ld_delta"]) < 1e-5 and out["kl"] < 1e-6


# --- per-item reliability ---------------------------------------------------------------------------------------------

def test_anti_steerable_fraction_counts_items_moved_against_the_strength():
    shift = torch.tensor([1.0, 2.0, -1.0, 3.0, -0.5, 0.0, 2.0])
    assert anti_steerable_fraction(shift, 0.5) == pytest.approx(2 / 7)  # two items go down; 0 is not against
    assert anti_steerable_fraction(shift, -1.0) == pytest.approx(4 / 7)  # a knock-out: four items go up
    assert math.isnan(anti_steerable_fraction(shift, 0.0))


def test_bootstrap_interval_is_the_seeded_percentile_interval_of_resampled_means():
    values = torch.tensor([0.3, -1.2, 2.5, 0.9, 1.1, -0.4, 3.0, 0.0])
    low, high = bootstrap_ci(values, seeded_generator(7), n_boot=500)
    picks = torch.randint(len(values), (500, len(values)), generator=seeded_generator(7)).numpy()
    means = values.double().numpy()[picks].mean(1)
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)  # numpy, by hand
    assert (low, high) == bootstrap_ci(values, seeded_generator(7), n_boot=500)  # seeded: the same again
    assert low < float(values.mean()) < high
    assert bootstrap_ci(torch.full((5,), 1.5), seeded_generator(0)) == (1.5, 1.5)
    noise = torch.randn(400, generator=seeded_generator(1), dtype=torch.float64)
    low, high = bootstrap_ci(noise, seeded_generator(2))
    assert (high - low) == pytest.approx(2 * 1.96 * float(noise.std()) / 20, rel=0.15)  # the normal interval


def test_halves_are_a_seeded_split_fixed_per_family_and_seed():
    select, report = halves(12, 0, "antonyms")
    assert sorted(torch.cat([select, report]).tolist()) == list(range(12)) and len(select) == len(report) == 6
    assert all(torch.equal(a, b) for a, b in zip((select, report), halves(12, 0, "antonyms")))
    assert not torch.equal(select, halves(12, 1, "antonyms")[0]), "another seed, the same split"
    assert not torch.equal(select, halves(12, 0, "copying")[0]), "another family, the same split"
    shift = torch.arange(12, dtype=torch.float64)
    out = shift_metrics(shift, 1.0, 0, "antonyms")
    assert out["ld_delta_select"] == pytest.approx(float(shift[select].mean()))
    assert out["ld_delta_report"] == pytest.approx(float(shift[report].mean()))
    assert out["ld_delta_median"] == pytest.approx(5.0)  # torch's median: the lower middle value


def test_a_trial_logs_its_per_item_values_and_halves(tiny_llama):
    ctx = context(tiny_llama, n_eval=6)
    result = run_kind("steering", ctx, {"layer": 1, "strength": 2.0, "vector_type": "mean_diff"})
    shift = torch.tensor(result.items["ld_steered"]) - torch.tensor(result.items["ld_clean"])
    assert len(shift) == 6 and result.metrics["ld_delta"] == pytest.approx(float(shift.mean()), abs=1e-6)
    select, report = halves(6, 0, "antonyms")
    assert result.metrics["ld_delta_report"] == pytest.approx(float(shift[report].mean()), abs=1e-6)
    assert result.metrics["ld_delta_ci_low"] <= result.metrics["ld_delta"] <= result.metrics["ld_delta_ci_high"]


# --- held-out selection -----------------------------------------------------------------------------------------------

def halves_record(cells: dict[tuple[str, int, float], tuple[float, float]], selectivity: float = 5.0) -> SweepRecord:
    """(vector_type, layer, strength) -> (ld_delta on the selection half, on the reporting half), three seeds."""
    rows = []
    for (v, layer, s), (sel, rep) in cells.items():
        for seed in range(3):
            x, y = sel + 0.01 * seed, rep + 0.01 * seed
            rows.append({"run_id": f"{v}{layer}{s}{seed}", "model": "m", "kind": "steering", "seed": seed,
                         "family": "antonyms", "layer": layer, "strength": s, "vector_type": v,
                         "ld_delta": (x + y) / 2, "ld_delta_select": x, "ld_delta_report": y, "kl": 0.1,
                         "accuracy_clean": 1.0, "selectivity": selectivity if s < 0 else float("nan")})
    return SweepRecord("t", "steering", "m", 4, pd.DataFrame(rows), pd.DataFrame(),
                       ["seed", "family", "layer", "strength", "vector_type"])


HALVES = {("mean_diff", 1, 1.0): (2.0, 1.5), ("random", 1, 1.0): (0.0, 0.0),
          ("mean_diff", 2, 1.0): (1.0, 9.0), ("random", 2, 1.0): (0.0, 0.0)}  # L2 is best only on the reporting half


def test_held_out_selection_never_reads_the_reporting_half():
    boost = next(c for c in SECTIONS.get("steering").build(halves_record(HALVES)).cards if "raises" in c.claim)
    assert (boost.extra["layer"], boost.extra["strength"]) == (1, 1.0)  # not L2, planted in the reporting half only
    assert boost.mean == pytest.approx(1.51) and boost.extra["selection_effect"] == pytest.approx(2.01)
    assert "on held-out items" in boost.claim and "(+2.01 on the half it was chosen on)" in boost.claim
    assert any("on all items instead: L2" in c for c in boost.caveats)  # choosing on all items would take L2
    for poison in (-50.0, 50.0, float("nan")):  # anything in the reporting half leaves the pick where it was
        cells = {k: (sel, poison if k != ("mean_diff", 1, 1.0) else rep) for k, (sel, rep) in HALVES.items()}
        again = next(c for c in SECTIONS.get("steering").build(halves_record(cells)).cards if "raises" in c.claim)
        assert (again.extra["layer"], again.extra["strength"]) == (1, 1.0)


def test_cards_pick_the_largest_own_effect_among_cells_beyond_the_control():
    # the boost the old rule took: where the random vector does the most damage (+0.96 vs -3.03)
    cells = {("mean_diff", 18, 0.5): (0.96, 0.96), ("random", 18, 0.5): (-3.03, -3.03),
             ("mean_diff", 18, 0.25): (2.14, 2.14), ("random", 18, 0.25): (-0.5, -0.5),
             ("mean_diff", 14, 1.0): (2.5, 2.5), ("random", 14, 1.0): (2.6, 2.6)}  # big, but no more than random
    selection = halves_record(cells).frame.rename(columns={"ld_delta_select": "value"})
    assert pick_cell(selection, ["mean_diff"], 1) == ("mean_diff", 18, 0.25)


def test_a_knock_out_is_graded_A_only_when_selective():
    cells = {("mean_diff", 1, -1.0): (-3.0, -3.0), ("random", 1, -1.0): (-0.2, -0.2)}
    weak = next(c for c in SECTIONS.get("steering").build(halves_record(cells, 1.17)).cards if "lowers" in c.claim)
    assert weak.grade == "B" and "not selective: selectivity 1.2 < 2" in weak.why
    assert weak.caveats[0].startswith("not selective: selectivity 1.17")
    strong = next(c for c in SECTIONS.get("steering").build(halves_record(cells, 3.0)).cards if "lowers" in c.claim)
    assert strong.grade == "A" and not any("not selective" in c for c in strong.caveats)


def test_the_grading_rule_states_the_held_out_and_selectivity_rules():
    from orchestrator.report import claims

    rule = claims.__doc__
    assert "Held-out selection" in rule and "reporting half" in rule and "selectivity" in rule and ">= 2" in rule
    assert grade(claims.Evidence({0: -3.0, 1: -3.1, 2: -2.9}, {0: True, 1: True, 2: True},
                                 {0: -0.1, 1: -0.2, 2: 0.0}, -1, float("nan")))[0] == "B"


# --- generation -------------------------------------------------------------------------------------------------------

def test_generation_at_strength_zero_is_model_generate_and_changes_nothing(tiny_llama):
    ctx = context(tiny_llama, "factual_recall", n_eval=4)
    run = ctx.family
    assert (run.eval_batch.mask == 0).any(), "left padding must be exercised"
    zeros = {1: torch.zeros(4, tiny_llama.config.hidden_size)}
    ours = greedy(tiny_llama, run.eval_batch, 6, zeros)
    batch = run.eval_batch
    theirs = tiny_llama.module.generate(input_ids=batch.ids, attention_mask=batch.mask, max_new_tokens=6,
                                        do_sample=False, pad_token_id=tiny_llama.tokenizer.pad_token_id)
    assert torch.equal(ours, theirs[:, run.eval_batch.ids.shape[1]:])  # token for token
    ctx.options = {"generate": {"tokens": 6}}
    out = run_kind("steering", ctx, {"layer": 1, "strength": 0.0, "vector_type": "mean_diff"})
    m = out.metrics
    assert m["neutral_kl"] == pytest.approx(0.0, abs=1e-6)  # float32 noise of the run from the cached layer
    for name in ("target_hit_rate", "fluency_nll", "repetition", "distinct_2"):
        assert m[name] == pytest.approx(m[f"{name}_clean"], abs=1e-6, nan_ok=True), name
    assert "unsteered:" in out.artifacts["continuations.txt"].decode()


def test_steered_generation_equals_a_hand_written_greedy_loop(tiny_llama):
    """KV cache, batch and left padding vs one prompt at a time, the whole sequence re-run every token."""
    ctx = context(tiny_llama, "factual_recall", n_eval=3)
    run, layer, strength = ctx.family, 0, 4.0  # here steering only the prompt positions would change token 2 on
    vector = strength * run.resid_norm(layer) * steering_vector(ctx, layer, "mean_diff")
    ours = greedy(tiny_llama, run.eval_batch, 6, {layer: vector.expand(3, -1)})
    hook = tiny_llama.module.model.layers[layer].register_forward_hook(
        lambda m, i, o: (o[0] + vector, *o[1:]) if isinstance(o, tuple) else o + vector)
    try:
        for row, item in enumerate(run.split.eval):
            ids = tiny_llama.tokenizer(item.prompt)["input_ids"]
            for step in range(6):
                with torch.no_grad():
                    ids.append(int(tiny_llama.module(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
                assert ids[-1] == int(ours[row, step]), (row, step)
    finally:
        hook.remove()


def test_continuation_nll_is_the_mean_token_nll_of_a_plain_forward(tiny_llama):
    tok = tiny_llama.tokenizer
    prompts = [tok("The capital of France is")["input_ids"], tok("Hi")["input_ids"]]
    continuations = [[314, 2699, 11], [42]]
    nll = continuation_nll(tiny_llama, prompts, continuations)
    for p, c, value in zip(prompts, continuations, nll):
        with torch.no_grad():
            logp = tiny_llama.module(input_ids=torch.tensor([p + c])).logits[0].log_softmax(-1)
        expected = -np.mean([float(logp[len(p) - 1 + t, token]) for t, token in enumerate(c)])
        assert float(value) == pytest.approx(expected, abs=1e-4)
    assert math.isnan(float(continuation_nll(tiny_llama, prompts, [[5], []])[1]))


def test_repetition_and_distinct_2_on_constructed_sequences():
    assert repetition([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5)  # 5 four-grams, one repeats
    assert repetition([5, 5, 5, 5, 5, 5]) == pytest.approx(2 / 3)
    assert repetition([1, 2, 3, 4, 5, 6]) == 0.0 and math.isnan(repetition([1, 2, 3]))
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)  # (1,2) twice across sequences
    assert distinct_n([[7, 7, 7, 7]], 2) == pytest.approx(1 / 3) and math.isnan(distinct_n([[1], []], 2))
    assert until_eos(torch.tensor([[4, 2, 5], [6, 7, 8]]), [2]) == [[4], [6, 7, 8]]


def test_neutral_prompts_ship_with_the_package(tiny_llama):
    prompts = neutral_prompts()
    assert len(prompts) >= 8 and not any(p.startswith("#") for p in prompts)
    assert eos_ids(tiny_llama) == [tiny_llama.tokenizer.eos_token_id]


# --- multi-layer steering ---------------------------------------------------------------------------------------------

def hooked_ld(model, item, adds: dict[int, torch.Tensor]) -> float:
    handles = [model.module.model.layers[layer].register_forward_hook(
        lambda m, i, o, v=v: (o[0] + v, *o[1:]) if isinstance(o, tuple) else o + v) for layer, v in adds.items()]
    try:
        logits = oracle.last_logits(model, item.prompt)
    finally:
        for h in handles:
            h.remove()
    return oracle.logit_diff(model, logits, item.target, item.distractor)


@pytest.mark.parametrize("layers,strength,vector_type", [([0, 2], 1.5, "mean_diff"), ([1, 2, 3], -0.75, "probe")])
def test_multi_layer_steering_equals_hand_written_hooks_at_each_layer(tiny_model, layers, strength, vector_type):
    ctx = context(tiny_model)
    out = trial(ctx, layer=layers, strength=strength, vector_type=vector_type)
    adds = {layer: strength * ctx.family.resid_norm(layer) * steering_vector(ctx, layer, vector_type)
            for layer in layers}  # each layer's own vector and own r_L
    deltas = [hooked_ld(tiny_model, item, adds) - hooked_ld(tiny_model, item, {}) for item in ctx.family.split.eval]
    assert out["ld_delta"] == pytest.approx(np.mean(deltas), abs=1e-4)
    assert out["depth"] == pytest.approx(np.mean(layers) / tiny_model.n_layers)


def test_a_one_element_layer_set_equals_single_layer_steering(tiny_llama):
    ctx = context(tiny_llama, others=["capitalization"])
    for strength in (-1.0, 2.0):
        alone, as_set = (trial(ctx, layer=layer, strength=strength, vector_type="pca") for layer in (2, [2]))
        assert alone.keys() == as_set.keys()
        for key in alone:
            assert as_set[key] == pytest.approx(alone[key], abs=1e-6, nan_ok=True), key


# --- the vectors' geometry -------------------------------------------------------------------------------------------

def pairs(split: bool, d: int = 32, n: int = 60) -> tuple[TrainActs, torch.Tensor]:
    """Paired differences along a shared direction s with varying size, plus (if split) a larger answer axis a
    whose sign flips between halves of the items (token A the target of half the items, B of the others)."""
    g = torch.Generator().manual_seed(3)
    s, a = torch.linalg.qr(torch.randn(d, 2, generator=g))[0].T
    base = torch.randn(n, d, generator=g)
    size = torch.rand(n, 1, generator=g) * 2 + 0.5
    sign = torch.tensor([1.0, -1.0]).repeat(n // 2)[:, None]
    diff = size * s + (3.0 * sign * a if split else 0) + 0.05 * torch.randn(n, d, generator=g)
    return TrainActs(base + diff, base, base), s


def test_pca_follows_mean_diff_when_the_pairs_agree_and_not_when_they_split():
    from interventions.reliability import pair_consistency

    for split, aligned in ((False, True), (True, False)):
        acts, shared = pairs(split)
        pca, mean_diff = (VECTORS.get(v)(acts, seeded_generator(0)) for v in ("pca", "mean_diff"))
        assert cosine(mean_diff, shared) > 0.9  # the mean difference finds the shared direction either way
        consistency = pair_consistency(acts.with_target - acts.with_distractor)
        if aligned:
            assert cosine(pca, mean_diff) > 0.9 and consistency > 0.9
        else:
            assert abs(cosine(pca, mean_diff)) < 0.3 and consistency < 0.5


def test_trials_log_the_cosine_to_mean_diff_and_the_pairs_consistency(tiny_llama):
    from interventions.reliability import pair_consistency

    ctx = context(tiny_llama)
    out = trial(ctx, layer=2, strength=1.0, vector_type="pca")
    acts = ctx.family.train_acts(2)
    pca, md = steering_vector(ctx, 2, "pca"), steering_vector(ctx, 2, "mean_diff")
    assert out["cos_mean_diff"] == pytest.approx(float(pca @ md), abs=1e-5)
    diffs = (acts.with_target - acts.with_distractor).double()
    mean = diffs.mean(0)
    hand = float((diffs @ mean / (diffs.norm(dim=1) * mean.norm())).mean())
    assert out["pair_consistency"] == pytest.approx(hand, abs=1e-9) == pair_consistency(diffs)
    assert trial(ctx, layer=2, strength=1.0, vector_type="mean_diff")["cos_mean_diff"] == pytest.approx(1.0)


# --- saved vectors ----------------------------------------------------------------------------------------------------

def test_a_saved_vector_loads_back_equal(tmp_path, tiny_llama):
    (tmp_path / "s.yaml").write_text(spec(layer=[1, 2], strength=[1.0], vector_type=["mean_diff", "random"]))
    sweep = load_sweep(tmp_path / "s.yaml")
    ctx = context(tiny_llama, n_train=4, n_eval=2)
    assert ctx.family.split.digest() == sweep.parts[0].splits[("antonyms", 0)].digest()
    gathered = Gathered()
    for layer in (1, 2):  # what the driver gathers from trial results (tensors travel as safetensors bytes)
        for vtype in ("mean_diff", "random"):
            result = run_kind("steering", ctx, {"layer": layer, "strength": 1.0, "vector_type": vtype})
            gathered.add("t", result.extra())
    assert vectors_file(sweep.parts[0], gathered, None, tmp_path / "v.safetensors") == 6  # 2 layers x (2 vectors + r_L)
    for layer in (1, 2):
        saved = read(tmp_path / "v.safetensors", "antonyms", 0, layer, "mean_diff")
        assert torch.equal(saved.unit, steering_vector(ctx, layer, "mean_diff"))
        assert saved.r_l == pytest.approx(ctx.family.resid_norm(layer), rel=1e-7)
        plain = load_file(str(tmp_path / "v.safetensors"))[vector_name("antonyms", 0, layer, "random")]
        assert torch.equal(plain, steering_vector(ctx, layer, "random"))
    # a later invocation keeps the earlier file's vectors of unchanged items and drops those of changed items
    assert vectors_file(sweep.parts[0], Gathered(), tmp_path / "v.safetensors", tmp_path / "again.safetensors") == 6
    (tmp_path / "s.yaml").write_text(spec(n_train=5, layer=[1], strength=[1.0], vector_type=["mean_diff"]))
    changed = load_sweep(tmp_path / "s.yaml")
    assert vectors_file(changed.parts[0], Gathered(), tmp_path / "v.safetensors", tmp_path / "none.safetensors") == 0


# --- the console table ------------------------------------------------------------------------------------------------

def test_the_table_shows_the_control_beside_each_row_and_sorts_by_the_effect_beyond_it():
    cells = {(14, -1.0, "mean_diff"): -10.5, (14, -1.0, "random"): -10.4, (18, 0.25, "mean_diff"): 2.14,
             (18, 0.25, "random"): -0.5, (18, 0.5, "mean_diff"): 0.96, (18, 0.5, "random"): -3.03}
    rows = [{"family": "factual_recall", "layer": layer, "strength": s, "vector_type": v, "seed": seed,
             "ld_delta": x + 0.01 * seed} for (layer, s, v), x in cells.items() for seed in range(3)]
    rows += [{"family": "factual_recall", "layer": None, "strength": None, "vector_type": "prompt", "seed": seed,
              "ld_delta": 1.0} for seed in range(3)]
    group_by = ["family", "layer", "strength", "vector_type"]
    kind = KINDS.get("steering")
    table = beside_control(aggregate(rows, group_by, ["ld_delta"], "ld_delta"), group_by, kind)
    top = table.iloc[0]
    assert (top["layer"], top["strength"], top["vector_type"]) == (18, 0.5, "mean_diff")  # 3.99 beyond random
    assert top["ld_delta_control_mean"] == pytest.approx(-3.02) and top["ld_delta_beyond"] == pytest.approx(3.99)
    assert list(table["vector_type"][:3]) == ["mean_diff"] * 3
    assert table.iloc[2]["layer"] == 14  # -10.5 vs -10.4: what any vector of that norm does, last of the vectors
    assert table["ld_delta_control_mean"][3:].isna().all()  # the control's own rows and the prompt row follow
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(table.assign(**{f"{m}_{s}": 0.0 for m in kind.shown for s in ("mean", "std")}), group_by,
                         kind, 20, "t"))
    text = console.export_text()
    assert "control (vector_type=random)" in text and re.search(r" 0\.97 ± 0\.01 │ +-3\.02", text)  # no forced +


# --- the spec ---------------------------------------------------------------------------------------------------------

TINY = spec(seed=[0, 1], family=["antonyms", "copying"], layer=[0, 3], strength=[-1.0, 0.5],
            vector_type=["mean_diff", "random"])
IDS_ON_MAIN = "737b79ff5855ac02"  # sha of the steering points' trial ids before this issue (must not rerun)


def test_existing_trial_ids_do_not_change_and_the_baseline_adds_stable_points(tmp_path):
    import hashlib

    (tmp_path / "s.yaml").write_text(TINY)
    points = expand(load_sweep(tmp_path / "s.yaml"))
    steering = [p for p in points if p.values["vector_type"] != "prompt"]
    assert hashlib.sha256(" ".join(p.trial_id for p in steering).encode()).hexdigest()[:16] == IDS_ON_MAIN
    prompt = [p for p in points if p.values["vector_type"] == "prompt"]
    assert [p.values for p in prompt] == [{"seed": s, "family": f, "vector_type": "prompt", "shots": 4}
                                          for s in (0, 1) for f in ("antonyms", "copying")]
    assert [p.trial_id for p in expand(load_sweep(tmp_path / "s.yaml"))] == [p.trial_id for p in points]
    (tmp_path / "s.yaml").write_text(TINY + "baseline: {shots: 0}\n")
    assert [p.trial_id for p in expand(load_sweep(tmp_path / "s.yaml"))] == [p.trial_id for p in steering]
    (tmp_path / "s.yaml").write_text(TINY + "baseline: {shots: 2}\n")
    assert {p.trial_id for p in expand(load_sweep(tmp_path / "s.yaml"))} & {p.trial_id for p in prompt} == set()
    (tmp_path / "s.yaml").write_text(TINY + "generate: {tokens: 8}\n")
    ids = {p.trial_id for p in expand(load_sweep(tmp_path / "s.yaml"))}
    assert ids.isdisjoint({p.trial_id for p in steering})  # generation adds metrics: every point runs again


def test_layer_sets_are_points_with_the_set_as_their_value(tmp_path):
    (tmp_path / "s.yaml").write_text(spec(layer=[[3, 1], 2, [2]], strength=[1.0], vector_type=["mean_diff"]))
    points = [p for p in expand(load_sweep(tmp_path / "s.yaml")) if p.values["vector_type"] != "prompt"]
    assert [p.values["layer"] for p in points] == [[1, 3], 2, [2]] and len({p.trial_id for p in points}) == 3


BAD = [
    ("baseline on another kind", spec("skip", skip=[[1]]) + "baseline: {shots: 2}\n", "baseline",
     "only the steering kind reads it, not skip"),
    ("generate on another kind", spec("early_exit", exit_layer=[1]) + "generate: {tokens: 4}\n", "generate",
     "only the steering kind reads it, not early_exit"),
    ("more shots than train items", spec(layer=[1], strength=[1.0], vector_type=["pca"]) + "baseline: {shots: 9}\n",
     "baseline.shots", "9 demonstrations come from the train items, but n_train is 4"),
    ("misspelt baseline key", spec(layer=[1], strength=[1.0], vector_type=["pca"]) + "baseline: {shot: 2}\n",
     "baseline.shot", "did you mean 'shots'?"),
    ("no tokens", spec(layer=[1], strength=[1.0], vector_type=["pca"]) + "generate: {tokens: 0}\n",
     "generate.tokens", "greater than or equal to 1"),
    ("a set layer outside the model", spec(layer=[1, [0, 9]], strength=[1.0], vector_type=["pca"]), "axes.layer.1.1",
     "layer 9 is outside 0..3"),
    ("a set repeating a layer", spec(layer=[[1, 1]], strength=[1.0], vector_type=["pca"]), "axes.layer.0",
     "layer set [1, 1] repeats a layer"),
    ("an empty set", spec(layer=[[]], strength=[1.0], vector_type=["pca"]), "axes.layer.0",
     "a layer set needs at least one layer"),
    ("a negative layer in a set", spec(layer=[[0, -2]], strength=[1.0], vector_type=["pca"]), "axes.layer.0",
     "greater than or equal to 0"),
    ("a layer that is text", spec(layer=["six"], strength=[1.0], vector_type=["pca"]), "axes.layer.0",
     "a layer is an integer or a list of integers"),
    ("the same set twice", spec(layer=[[2, 1], [1, 2]], strength=[1.0], vector_type=["pca"]), "axes.layer",
     "duplicate value [1, 2]"),
]


@pytest.mark.parametrize("text,field,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_steering_input_is_one_line_exit_2_and_touches_no_store(tmp_path, monkeypatch, capsys, text, field, reason):
    err = bad_input(tmp_path, monkeypatch, capsys, text)
    assert f"spec.yaml: {field}: " in err and reason in err, err


def test_dry_run_costs_the_baseline_and_layer_sets(tmp_path, monkeypatch, capsys):
    """The cost estimate counts a prompting baseline point (no layer) and a layer set (from its lowest layer)."""
    from orchestrator.cost import work
    from tests.conftest import run_main, spec

    (tmp_path / "s.yaml").write_text(spec("steering", "costed", layer=[[1, 3], 2], strength=[0.5],
                                          vector_type=["mean_diff"], extra={"generate": {"tokens": 2}}))
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(tmp_path / "s.yaml")
    forwards = sorted(layers for _, layers in work(sweep, sweep.parts[0], expand(sweep)).forwards)
    assert forwards == [1, 2, 4]  # layer 2 and the set {1, 3} restart above their lowest layer; the baseline: all 4
    code, out, err = run_main(monkeypatch, capsys, "sweep", "s.yaml", "--dry-run")
    assert code == 0 and "estimate: wall ~" in out and "not counted: generation" in out, out + err
