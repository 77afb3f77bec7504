"""Attribution patching (DESIGN §6): a first-order estimate of every ablation grid point's `ld_drop`, from one
forward and one backward per (family, seed, run) that serve every component of every layer at once.

The exact trial (ablation.py) logs ld_drop = mean_i(LD_clean,i - LD_out,i), where LD_out is the run the method
acts on (`Method.base`: the clean run, or the corrupt run for `clean_to_corrupt`) with one component replaced by r.
Expanded to first order around that run, at the component's value a there:

    LD_out,i ~ LD_base,i + sum_pos (r - a) . dLD_i/da
    ld_drop  ~ mean(LD_clean - LD_base) - sum_{i,pos} (r - a) . d mean(LD_base)/da

For methods on the clean run the first term is 0 and this is -(r - a_clean) . dLD/da at the clean run, summed
over positions, averaged over items (Nanda 2023); for `clean_to_corrupt` (denoising) the expansion is at the
corrupt run, with the clean value as r, and the first term is the exact clean-corrupt gap. The second term,
`ld_shift_estimate` = LD_out - LD_base to first order, is what a screen ranks by (|.|): for the clean-run methods
it is -ld_drop_estimate; for denoising it is the LD the patch brings back (ranking denoising by |ld_drop| would
put first the patches that recover nothing).

r comes from the same ABLATIONS functions and the same `values` the exact trial uses, and only real
(non-padding) positions are replaced, so estimate and exact differ only by the linearisation. The gradients are
total derivatives at each component: `layer` and `resid` share d/d resid_post[L]; `head` h is the slice of
d/d(o_proj input). KL(P_clean || P_out) has its minimum, and so zero gradient, at the clean run: there is no
first-order estimate of KL, which is why a screen estimates LD.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from interventions.ablation import ABLATIONS, touched
from interventions.architectures import part
from interventions.components import Site, at_site, batch_of, corrupt_run, values
from interventions.context import FamilyRun, TrialContext
from interventions.forward import position_ids
from interventions.hooks import observe, replace
from interventions.metrics import logit_diff, mean
from interventions.registry import Registry


@dataclass(frozen=True)
class Estimate:
    """A way to estimate a kind's grid points without running them: fn(ctx, points) -> one {metric: value} each."""

    fn: Callable[[TrialContext, list[dict]], list[dict[str, float]]]
    kinds: tuple[str, ...]  # the experiment kinds it estimates
    metrics: tuple[str, ...]  # what it logs per grid point
    score: str  # the metric whose |value| ranks points for verification
    params: tuple[str, ...] = ()  # the `screen:` keys it reads besides estimate / verify_* (passed as keywords)


ESTIMATES: Registry[Estimate] = Registry("estimate")


def gradients(run: FamilyRun, which: str) -> dict[str, dict[int, Tensor]]:
    """d mean(LD)/d(component) at every layer on the clean or corrupt eval run (one forward, one backward), cached.

    Keys: `resid` (= `layer`: d/d resid_post[L]), `attn` (o_proj output), `mlp`, `head` ((batch, pos, heads, d_head):
    d/d o_proj input). The model's weights stay requires_grad False; the embedding output becomes a leaf that
    requires grad, so autograd.grad reaches every captured activation.
    """
    return run.memo(("grads", which), lambda: _gradients(run, which))


def _gradients(run: FamilyRun, which: str) -> dict[str, dict[int, Tensor]]:
    model, batch = run.model, batch_of(run, which)
    if which == "corrupt":
        corrupt_run(run)  # checks the family can be patched
    arch = model.arch
    blocks = dict(enumerate(part(model.module, arch.layers)))
    seen: dict[tuple[str, int], Tensor] = {}

    def keep(*names):
        def fn(i, x_in, x_out):
            for name, x in zip(names, (x_in, x_out)):
                if name:
                    seen[name, i] = x
        return fn

    with torch.enable_grad(), replace(part(model.module, arch.embed), lambda x: x.detach().requires_grad_(True)), \
            observe(blocks, keep(None, "resid")), \
            observe({i: part(b, arch.attn_out) for i, b in blocks.items()}, keep("head", "attn")), \
            observe({i: part(b, arch.mlp) for i, b in blocks.items()}, keep(None, "mlp")):
        out = model.module(input_ids=batch.ids, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
                           use_cache=False, logits_to_keep=1)
        ld = logit_diff(out.logits[:, -1].float(), run.target, run.distractor).mean()
        keys = list(seen)
        grads = torch.autograd.grad(ld, [seen[k] for k in keys])
    found: dict[str, dict[int, Tensor]] = {"resid": {}, "attn": {}, "mlp": {}, "head": {}}
    n_heads = model.config.num_attention_heads
    for (name, layer), g in zip(keys, grads):
        found[name][layer] = g.unflatten(-1, (n_heads, -1)) if name == "head" else g
    found["layer"] = found["resid"]
    return found


def ld_gap(run: FamilyRun, which: str) -> float:
    """mean(LD_clean) - mean(LD_base): 0 for the clean run, the clean-corrupt gap for the corrupt run."""
    if which == "clean":
        return 0.0
    ld_clean = mean(logit_diff(run.clean_logits, run.target, run.distractor))
    return ld_clean - mean(logit_diff(corrupt_run(run)[0], run.target, run.distractor))


def shift(run: FamilyRun, seed: int, site: Site, method: str, positions: str = "all") -> float:
    """First-order LD_out - LD_base of one grid point: sum over items and the real positions the point replaces
    (the `positions` axis) of (r - a) . dmeanLD/da."""
    m = ABLATIONS.get(method)
    base = at_site(values(run, m.base, site.component), site)
    keep = touched(run.eval_batch.mask, positions).view(*base.shape[:2], *[1] * (base.dim() - 2))
    value = torch.where(keep, m.fn(run, site, base, seed), base)
    grad = at_site(gradients(run, m.base)[site.component], site)
    return float(((value - base).double() * grad.double()).sum())


def site_of(point: dict) -> Site:
    return Site(point["component"], point["layer"], () if point.get("head") is None else (point["head"],))


@torch.no_grad()
def attribution(ctx: TrialContext, points: list[dict]) -> list[dict[str, float]]:
    """ld_drop_estimate and ld_shift_estimate of ablation grid points of one (family, seed)."""
    out = []
    for point in points:
        base = ABLATIONS.get(point["method"]).base
        moved = shift(ctx.family, ctx.seed, site_of(point), point["method"], point.get("positions") or "all")
        out.append({"ld_drop_estimate": ld_gap(ctx.family, base) - moved, "ld_shift_estimate": moved})
    return out


ESTIMATES.register("attribution")(Estimate(attribution, kinds=("ablation",),
                                           metrics=("ld_drop_estimate", "ld_shift_estimate"),
                                           score="ld_shift_estimate"))

from interventions import ig  # noqa: E402,F401  (registers `ig`; it reads this module's names)
