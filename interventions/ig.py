"""Integrated-gradients screen estimate (`screen: {estimate: ig, steps: k}`; EAP-IG, Hanna et al. 2024): the
gradient of mean LD averaged along a straight path from the base run to the replacement, times (r - a).

The path is joint, as in EAP-IG: for one (component, method, positions) group of a (family, seed)'s points, every
site of the group at every layer is moved at once, a -> a + alpha (r - a), alpha = (j + 0.5) / k (midpoints),
j < k, so each step is one forward and one backward that serve every site of the group: k per group, not per site.
Each site's estimate is (r - a) . mean_j dLD/da at the jointly moved points. What it estimates, exactly:

- a group of one site: the integral of the gradient along that site's own path, which is the exact trial's LD
  shift; the midpoint rule's error falls as O(1/k^2);
- a group of many sites: each site's share of the joint path integral. The shares sum (completeness) to the LD
  shift of the path's end point, every site of the group moved at once by its own base-run (r - a) (a shift, so
  a site downstream of another moved one is not left at exactly r); a site's own ablation effect is approximated,
  not converged to. `ig_layer` makes one path per layer instead (k x layers passes). Where LD is linear in the
  sites (the linear toy) both coincide with the exact trials for any k.

k = 1 is not first-order attribution: its gradient is taken half-way (alpha = 0.5), not at the base run.
The moved value is a shift added to each hooked module's output (the `head` slice of the o_proj input, the attn
and mlp outputs, the block output for `layer` / `resid`), so a shift at layer L reaches layer L' > L's site.
"""
from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import Tensor

from interventions.ablation import ABLATIONS, touched
from interventions.architectures import part
from interventions.attribution import ESTIMATES, Estimate, ld_gap, site_of
from interventions.components import Site, at_site, batch_of, n_heads, values
from interventions.context import FamilyRun, TrialContext
from interventions.forward import position_ids
from interventions.hooks import replace
from interventions.metrics import logit_diff


def shifts(run: FamilyRun, seed: int, sites: list[Site], method: str, positions: str) -> dict[int, Tensor]:
    """(r - a) per layer on the method's base run, summed over the group's sites (heads: the full
    (batch, pos, heads, d_head) value with zeros at the heads not in the group); only touched positions move."""
    m = ABLATIONS.get(method)
    out: dict[int, Tensor] = {}
    for site in sites:
        full = values(run, m.base, site.component)[site.layer]
        base = at_site({site.layer: full}, site)
        keep = touched(batch_of(run, m.base).mask, positions).view(*base.shape[:2], *[1] * (base.dim() - 2))
        delta = torch.where(keep, m.fn(run, site, base, seed), base) - base
        acc = out.setdefault(site.layer, torch.zeros_like(full))
        if site.component == "head":
            acc[:, :, list(site.heads)] += delta
        else:
            acc += delta
    return out


def path_gradients(run: FamilyRun, component: str, which: str, delta: dict[int, Tensor],
                   steps: int) -> dict[int, Tensor]:
    """mean_j dmeanLD/dx_L at x_L = a_L + alpha_j delta_L, every layer of `delta` moved at once (k forwards and
    backwards of the whole model); heads as (batch, pos, heads, d_head)."""
    model, batch = run.model, batch_of(run, which)
    arch, blocks = model.arch, part(model.module, model.arch.layers)
    heads = component == "head"

    def module(layer: int):
        if component in ("layer", "resid"):
            return blocks[layer]
        return part(blocks[layer], {"head": arch.attn_out, "attn": arch.attn, "mlp": arch.mlp}[component])

    total = {layer: torch.zeros_like(d, dtype=torch.float64) for layer, d in delta.items()}
    for j in range(steps):
        alpha = (j + 0.5) / steps
        moved: dict[int, Tensor] = {}

        def move(layer: int, alpha: float = alpha, moved: dict = moved):
            def fn(x: Tensor) -> Tensor:
                d = delta[layer].flatten(-2) if heads else delta[layer]
                moved[layer] = x + alpha * d.to(x.dtype)
                return moved[layer]
            return fn

        with torch.enable_grad(), ExitStack() as stack:
            stack.enter_context(replace(part(model.module, arch.embed), lambda x: x.detach().requires_grad_(True)))
            for layer in delta:
                stack.enter_context(replace(module(layer), move(layer), inputs=heads))
            out = model.module(input_ids=batch.ids, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
                               use_cache=False, logits_to_keep=1)
            ld = logit_diff(out.logits[:, -1].float(), run.target, run.distractor).mean()
            layers = list(moved)
            grads = torch.autograd.grad(ld, [moved[i] for i in layers])
        for layer, g in zip(layers, grads):
            total[layer] += (g.unflatten(-1, (n_heads(model), -1)) if heads else g).double()
    return {layer: g / steps for layer, g in total.items()}


@torch.no_grad()
def integrated_gradients(ctx: TrialContext, points: list[dict], steps: int = 8,
                         per_layer: bool = False) -> list[dict[str, float]]:
    """ld_drop_estimate and ld_shift_estimate of ablation grid points of one (family, seed): one joint path per
    (component, method, positions) group of `points` (per_layer: and per layer), `steps` forwards and backwards
    each."""
    run, groups = ctx.family, {}
    for i, point in enumerate(points):
        key = (point["component"], point["method"], point.get("positions") or "all")
        groups.setdefault((*key, point["layer"]) if per_layer else key, []).append(i)
    out: list[dict[str, float]] = [{} for _ in points]
    for (component, method, positions, *_), members in groups.items():
        which = ABLATIONS.get(method).base
        sites = [site_of(points[i]) for i in members]
        grads = path_gradients(run, component, which, shifts(run, ctx.seed, sites, method, positions), steps)
        for i, site in zip(members, sites):
            own = shifts(run, ctx.seed, [site], method, positions)[site.layer]
            moved = float((at_site({site.layer: own}, site).double() * at_site(grads, site)).sum())
            out[i] = {"ld_drop_estimate": ld_gap(run, which) - moved, "ld_shift_estimate": moved}
    return out


def integrated_gradients_per_layer(ctx: TrialContext, points: list[dict], steps: int = 8) -> list[dict[str, float]]:
    """`ig` with one path per layer: the sites of one layer move together (all of a layer's heads), the other
    layers stay at the base run; k x layers forwards and backwards per (component, method). attn / mlp / layer /
    resid points are then single-site paths, which converge to the exact trial."""
    return integrated_gradients(ctx, points, steps, per_layer=True)


for _name, _fn in (("ig", integrated_gradients), ("ig_layer", integrated_gradients_per_layer)):
    ESTIMATES.register(_name)(Estimate(_fn, kinds=("ablation",), metrics=("ld_drop_estimate", "ld_shift_estimate"),
                                       score="ld_shift_estimate", params=("steps",)))
