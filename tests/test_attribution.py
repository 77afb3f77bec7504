"""Attribution estimates (interventions/attribution.py) against independent computations: finite differences of a
hand-hooked float64 forward, a toy in which LD is linear in the component (estimate = exact trial), heads summing
to attention, one item at a time (padding); the screen's verify set; claim cards on exact points only."""
from __future__ import annotations

import copy
import types
from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import nn

from interventions.ablation import ABLATIONS
from interventions.attribution import ESTIMATES, attribution, gradients, ld_gap, shift
from interventions.components import COMPONENTS, Site, at_site, values
from interventions.context import FamilyRun, TrialContext
from interventions.forward import position_ids
from interventions.hooks import count_hooks
from interventions.kinds import run_pack
from interventions.metrics import logit_diff
from tests.conftest import split

SEED = 5
FAMILY = "copying"  # prompts of several lengths: left padding is exercised


def _rms_norm(self, x: torch.Tensor) -> torch.Tensor:
    return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def double(model):
    """A float64 copy of a tiny model (finite differences need more than float32's 7 digits); its RMSNorms compute
    in float64 too (transformers' cast to float32 inside would limit every difference to float32's digits)."""
    module = copy.deepcopy(model.module).double()
    for norm in module.modules():
        if type(norm).__name__.endswith("RMSNorm"):
            norm.forward = types.MethodType(_rms_norm, norm)
    return replace(model, module=module)


@pytest.fixture(scope="module")
def tiny64(tiny_llama):
    return double(tiny_llama)


def run_of(model, family=FAMILY, n_train=6, n_eval=5) -> FamilyRun:
    return FamilyRun(model, split(model, family, 0, n_train, n_eval))


def site_for(component: str, layer: int, head: int = 1) -> Site:
    return Site(component, layer, (head,) if component == "head" else ())


def direction(run: FamilyRun, site: Site, method: str) -> torch.Tensor:
    """(r - a) at real positions: what the estimate multiplies the gradient by."""
    m = ABLATIONS.get(method)
    base = at_site(values(run, m.base, site.component), site)
    keep = run.eval_batch.mask.bool().view(*base.shape[:2], *[1] * (base.dim() - 2))
    return torch.where(keep, m.fn(run, site, base, SEED), base) - base


def hooked_mean_ld(run: FamilyRun, which: str, site: Site, add: torch.Tensor) -> float:
    """mean LD of the clean or corrupt eval batch with `add` added to the component at its site: a plain forward of
    the whole model with a hook written here (logits kept in the model's dtype)."""
    model = run.model.module
    batch = run.eval_batch if which == "clean" else run.encode([i.corrupt_prompt for i in run.split.eval])
    block = model.model.layers[site.layer]
    if site.component in ("resid", "layer"):
        handle = block.register_forward_hook(lambda m, i, o: (o[0] + add, *o[1:]) if isinstance(o, tuple) else o + add)
    elif site.component == "mlp":
        handle = block.mlp.register_forward_hook(lambda m, i, o: o + add)
    elif site.component == "attn":
        handle = block.self_attn.o_proj.register_forward_hook(lambda m, i, o: o + add)
    else:
        def heads(m, args):
            x = args[0].unflatten(-1, (model.config.num_attention_heads, -1)).clone()
            x[:, :, list(site.heads)] += add
            return (x.flatten(-2),)
        handle = block.self_attn.o_proj.register_forward_pre_hook(heads)
    try:
        with torch.no_grad():
            logits = model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
                           use_cache=False).logits[:, -1]
    finally:
        handle.remove()
    return float(logit_diff(logits, run.target, run.distractor).double().mean())


@pytest.mark.parametrize("method", ABLATIONS.names())
def test_the_estimate_is_the_derivative_of_patching_a_scaled_replacement(tiny64, method):
    """Patch a + eps (r - a) (the replacement scaled towards the clean value): the central difference of mean LD,
    eps -> 0, equals the estimated shift within 1e-3 relative, at every component."""
    run = run_of(tiny64)
    which = ABLATIONS.get(method).base
    for site in [site_for(c, 1) for c in COMPONENTS]:
        got = shift(run, SEED, site, method)
        delta = direction(run, site, method)
        errors = []
        for eps in (1e-1, 1e-3):
            up, down = (hooked_mean_ld(run, which, site, s * eps * delta) for s in (1, -1))
            errors.append(abs((up - down) / (2 * eps) - got))
        assert abs(got) > 1e-6, (site, method, got)  # a zero estimate would pass trivially
        assert errors[-1] <= 1e-3 * abs(got) and errors[-1] < errors[0], (site, method, got, errors)
    assert count_hooks(tiny64.module) == 0


def linear_toy(model):
    """The tiny Llama with LD linear in every component of its last layer: no final norm, the last MLP's output
    projection zeroed (so nothing nonlinear follows the last layer's attention), float64."""
    toy = double(model)
    toy.module.model.norm = nn.Identity()
    last = toy.module.model.layers[-1]
    with torch.no_grad():
        last.mlp.down_proj.weight.zero_()
    return toy


@pytest.mark.parametrize("method", ABLATIONS.names())
def test_on_a_linear_toy_the_estimate_equals_the_exact_trial(tiny_llama, method):
    toy = linear_toy(tiny_llama)
    run = run_of(toy, "antonyms")
    last = toy.n_layers - 1
    ctx = TrialContext(toy, SEED, run)
    points = [{"component": c, "layer": last, "method": method, **({"head": 2} if c == "head" else {})}
              for c in ("layer", "attn", "head", "resid")]
    estimates = attribution(ctx, points)
    for point, est in zip(points, estimates):
        exact = run_pack("ablation", ctx, [point])[0].metrics["ld_drop"]
        assert est["ld_drop_estimate"] == pytest.approx(exact, rel=1e-5, abs=1e-6), (point, est, exact)
    # at layer 0 (attention, then the nonlinear rest of the model) the estimate is not exact: the test can fail
    early = {"component": "attn", "layer": 0, "method": method}
    est = attribution(ctx, [early])[0]["ld_drop_estimate"]
    exact = run_pack("ablation", ctx, [early])[0].metrics["ld_drop"]
    assert abs(est - exact) > 1e-4 * abs(exact), (early, est, exact)


@pytest.mark.parametrize("positions", ["last", "all_but_first"])
@pytest.mark.parametrize("method", ["zero", "position_mean"])
def test_the_estimate_replaces_only_the_positions_the_exact_trial_does(tiny_llama, method, positions):
    """With a `positions` axis the estimate sums over the positions the trial replaces: on the linear toy it still
    equals the exact trial, and at a layer whose every position reaches the logits it differs from the all-positions
    estimate."""
    toy = linear_toy(tiny_llama)
    ctx = TrialContext(toy, SEED, run_of(toy, "antonyms"))
    point = {"component": "attn", "layer": toy.n_layers - 1, "method": method, "positions": positions}
    est = attribution(ctx, [point])[0]["ld_drop_estimate"]
    exact = run_pack("ablation", ctx, [point])[0].metrics["ld_drop"]
    assert est == pytest.approx(exact, rel=1e-5, abs=1e-6), (point, est, exact)
    # at the last layer only the last position reaches the logits; at L0 all do (zero: position_mean leaves a
    # first position that is the same token in every item as it is)
    early = {**point, "layer": 0, "method": "zero"}
    only, everywhere = (attribution(ctx, [{**early, "positions": p}])[0]["ld_drop_estimate"]
                        for p in (positions, "all"))
    assert abs(everywhere - only) > 1e-6, (everywhere, only)


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_per_head_estimates_sum_to_the_attention_estimate(tiny_model, method):
    """o_proj has no bias: zeroing every head is zeroing attn, and the heads' train means map to attn's train mean
    through o_proj, so the head replacements are consistent with attn's and their first-order effects add up."""
    run = run_of(tiny_model)
    n_heads = tiny_model.config.num_attention_heads
    for layer in range(tiny_model.n_layers):
        heads = sum(shift(run, SEED, Site("head", layer, (h,)), method) for h in range(n_heads))
        attn = shift(run, SEED, Site("attn", layer), method)
        assert heads == pytest.approx(attn, rel=1e-4, abs=1e-6), (layer, heads, attn)
        one = shift(run, SEED, Site("head", layer, (0,)), method)
        assert abs(one - attn) > 1e-6  # one head alone is not the whole attention: the comparison can fail


def test_the_batch_estimate_is_the_mean_of_one_item_runs(tiny_llama):
    """Left padding: the estimate over a padded batch equals the mean of the estimates of each item alone (no
    padding), so padding positions contribute nothing. Methods whose replacement does not depend on the item's
    index in the batch."""
    run = run_of(tiny_llama, n_eval=5)
    assert run.eval_batch.mask.sum(-1).unique().numel() > 1, "the eval prompts must differ in length"
    points = [{"component": c, "layer": 2, "method": m, **({"head": 3} if c == "head" else {})}
              for c in COMPONENTS for m in ("zero", "mean", "corrupt_to_clean", "clean_to_corrupt")]
    whole = attribution(TrialContext(tiny_llama, SEED, run), points)
    alone = []
    for i in range(len(run.split.eval)):
        one = FamilyRun(tiny_llama, replace(run.split, eval=(run.split.eval[i],)))
        alone.append(attribution(TrialContext(tiny_llama, SEED, one), points))
    for k, point in enumerate(points):
        for key in ("ld_drop_estimate", "ld_shift_estimate"):
            want = sum(a[k][key] for a in alone) / len(alone)
            assert whole[k][key] == pytest.approx(want, rel=1e-4, abs=1e-5), (point, key)


def test_gradients_vanish_at_padding_and_kl_has_no_first_order_term(tiny_llama):
    run = run_of(tiny_llama)
    pads = ~run.eval_batch.mask.bool()
    assert pads.any()
    for component, layers in gradients(run, "clean").items():
        for g in layers.values():
            assert float(g[pads].abs().max()) == 0.0, component
    # ld_gap: 0 on the clean run, the exact clean - corrupt LD gap on the corrupt run
    assert ld_gap(run, "clean") == 0.0
    est = attribution(TrialContext(tiny_llama, 0, run), [{"component": "resid", "layer": 3,
                                                          "method": "clean_to_corrupt"}])[0]
    assert est["ld_drop_estimate"] + est["ld_shift_estimate"] == pytest.approx(ld_gap(run, "corrupt"), abs=1e-9)


def test_attribution_is_the_registered_estimate_of_ablation():
    entry = ESTIMATES.get("attribution")
    assert entry.kinds == ("ablation",) and entry.score in entry.metrics and "ld_drop_estimate" in entry.metrics


# --- the verify set ---------------------------------------------------------------------------------------------------

def test_the_verify_set_is_the_top_k_by_abs_estimate_plus_a_seeded_sample_of_the_rest():
    from orchestrator.screen import select

    g = torch.Generator().manual_seed(0)
    groups = [("attn", "zero"), ("head", "mean")]
    scores = {}
    for component, method in groups:
        for i in range(40):
            scores[f"{component}-{method}-{i:02d}"] = ((component, method), float(torch.randn(1, generator=g)))
    chosen = select(scores, top=5, random=3, seed=7)
    for group in groups:
        ids = [t for t, (gr, _) in scores.items() if gr == group]
        by_size = sorted(ids, key=lambda t: -abs(scores[t][1]))
        top = {t for t in ids if chosen.get(t) == "top"}
        rand = {t for t in ids if chosen.get(t) == "random"}
        assert top == set(by_size[:5])  # exactly the top-k by |estimate|, negative estimates included
        assert len(rand) == 3 and not rand & top
    assert select(scores, top=5, random=3, seed=7) == chosen  # seeded: the same set every time
    other = select(scores, top=5, random=3, seed=8)
    assert {t for t, w in other.items() if w == "top"} == {t for t, w in chosen.items() if w == "top"}
    assert {t for t, w in other.items() if w == "random"} != {t for t, w in chosen.items() if w == "random"}
    small = {"a": (("mlp", "zero"), 1.0), "b": (("mlp", "zero"), -2.0)}
    assert select(small, top=5, random=3, seed=0) == {"a": "top", "b": "top"}  # fewer points than k: all of them


# --- the report: estimated points are marked, cards stand on exact points only ----------------------------------------

def screened_record():
    """A screened head grid: the estimates put a huge effect on L2 (never verified); the exact runs cover L0, L1."""
    from orchestrator.report.record import SweepRecord

    rows, estimates = [], []
    for seed in (0, 1, 2):
        for layer in range(4):
            for head in range(3):
                value = {0: 0.2, 1: 1.5, 2: 9.0, 3: 0.1}[layer] + 0.01 * head + 0.05 * seed
                point = {"seed": seed, "family": "antonyms", "component": "head", "layer": layer, "head": head,
                         "method": "zero"}
                estimates.append({**point, "run_id": f"e{seed}{layer}{head}", "ld_drop_estimate": value,
                                  "ld_shift_estimate": -value, "verify": ""})
                if layer in (0, 1):
                    rows.append({**point, "run_id": f"x{seed}{layer}{head}", "ld_drop": 0.8 * value, "kl": 0.1,
                                 "model": "tiny-llama", "kind": "ablation",
                                 "verify": "top" if layer == 1 else "random"})
    frame, est = pd.DataFrame(rows), pd.DataFrame(estimates)
    return SweepRecord("screened", "ablation", "tiny-llama", 4, frame, pd.DataFrame(columns=["run_id", "key", "step",
                       "value"]), ["seed", "family", "component", "layer", "head", "method"], None, [], estimates=est)


def test_claim_cards_never_cite_an_estimated_point():
    from orchestrator.report.sections import build

    record = screened_record()
    section = build(record)
    assert section.cards, "a screened sweep still gets cards from its exact points"
    exact_layers = set(record.frame["layer"])
    for card in section.cards:
        assert card.extra.get("layer") in exact_layers, card.claim
        assert "L2" not in card.claim, card.claim  # the estimated giant is never a claim
        assert card.mean <= record.frame["ld_drop"].abs().max() + 1e-9
    figure = next(s for s in section.figures if s.id == "screen")
    gids = {a.get_gid() for ax in figure.figure.axes for a in ax.get_children()}
    assert {"estimated", "exact"} <= gids  # marked differently
    assert any("Spearman" in note for note in section.notes)


# --- the spec: a screen is validated before anything starts -----------------------------------------------------------

def test_a_screen_on_another_kind_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from tests.conftest import bad_input, spec

    text = spec("steering", layer=[0], strength=[1.0], vector_type=["mean_diff"], extra={"screen": {"verify_top": 2}})
    err = bad_input(tmp_path, monkeypatch, capsys, text)
    assert err == "error: spec.yaml: screen: attribution estimates only kind ablation, not 'steering'"


@pytest.mark.parametrize("screen, message", [
    ({"verify_top": -1}, "screen.verify_top: Input should be greater than or equal to 0"),
    ({"estimate": "atp_star"}, "screen.estimate: unknown estimate 'atp_star'"),
    ({"verify_tpo": 3}, "screen.verify_tpo: unknown key; did you mean 'verify_top'?"),
])
def test_bad_screen_settings_are_one_line(tmp_path, monkeypatch, capsys, screen, message):
    from tests.conftest import bad_input, spec

    text = spec("ablation", component=["attn"], layer=[0], method=["zero"], extra={"screen": screen})
    err = bad_input(tmp_path, monkeypatch, capsys, text)
    assert err.startswith(f"error: spec.yaml: {message}"), err
