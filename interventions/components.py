"""Components of a layer (DESIGN §4): their captured values on a family's batches, and runs with one replaced.

`patched_logits` restarts from the cached resid_pre[L] (attn / mlp / head, with a hook on that
one module) or resid_post[L] (layer / resid), so the layers before L never run again; several
patches of one site's layer (methods, heads: a packed trial) share one batched forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interventions.architectures import part
from interventions.context import FamilyRun
from interventions.forward import Batch, clean_run, embed, last_position, position_ids, run_from
from interventions.hooks import capture, observe, replace
from interventions.registry import AtlasError

COMPONENTS = ("layer", "attn", "mlp", "head", "resid")
FROM_INPUT = ("attn", "mlp", "head")  # components whose run with a replacement restarts at resid_pre[L] (their layer's
# input); the others (layer, resid) restart after resid_post[L]
RUNS = ("clean", "corrupt", "train")  # the batches a component is read from


@dataclass(frozen=True)
class Site:
    """Where a component sits: layer L, and for `head` which heads (values then carry a heads dimension)."""

    component: str
    layer: int
    heads: tuple[int, ...] = ()


def _blocks(model):
    return part(model.module, model.arch.layers)


def n_heads(model) -> int:
    return model.config.num_attention_heads


def batch_of(run: FamilyRun, which: str) -> Batch:
    if which == "clean":
        return run.eval_batch
    key = (which, "batch")
    if which == "corrupt":
        return run.memo(key, lambda: run.encode([i.corrupt_prompt for i in run.split.eval]))
    return run.memo(key, lambda: run.encode([i.prompt for i in run.split.train]))


def corrupt_run(run: FamilyRun) -> tuple[Tensor, dict[int, Tensor]]:
    """Last-position logits and resid_post of every layer on the corrupt eval prompts."""
    if any(not i.corrupt_prompt for i in run.split.eval):
        raise AtlasError(f"family {run.split.family!r}: items without corrupt_prompt cannot be patched")
    batch = batch_of(run, "corrupt")
    if not torch.equal(batch.mask, run.eval_batch.mask):
        raise AtlasError(f"family {run.split.family!r}: corrupt prompts do not align with the clean ones")
    return run.memo(("corrupt", "run"), lambda: clean_run(run.model, batch))


@torch.no_grad()
def capture_all(run: FamilyRun, which: str, component: str) -> dict[int, Tensor]:
    model, batch = run.model, batch_of(run, which)
    blocks = _blocks(model)
    if component == "head":
        modules = {i: part(b, model.arch.attn_out) for i, b in enumerate(blocks)}
    elif component == "attn":
        modules = {i: part(b, model.arch.attn) for i, b in enumerate(blocks)}
    elif component == "mlp":
        modules = {i: part(b, model.arch.mlp) for i, b in enumerate(blocks)}
    else:
        modules = dict(enumerate(blocks))
    with capture(modules) as outs, capture(modules, inputs=True) as ins:
        model.module(input_ids=batch.ids, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
                     use_cache=False, logits_to_keep=last_position(batch))
    if component == "layer":
        return {i: outs[i] - ins[i] for i in outs}
    if component == "head":
        return {i: x.unflatten(-1, (n_heads(model), -1)) for i, x in ins.items()}  # (batch, pos, heads, head_dim)
    return dict(outs)


@torch.no_grad()
def masked_means(run: FamilyRun, which: str) -> dict[str, dict[int, Tensor]]:
    """Every component's mean over the real (non-padding) positions of a batch, at every layer: one forward,
    sums taken inside the hooks, so no activations are kept."""
    model, batch = run.model, batch_of(run, which)
    mask = batch.mask.bool()
    sums: dict[str, dict[int, Tensor]] = {c: {} for c in COMPONENTS}

    def add(component: str, layer: int, x: Tensor) -> None:
        sums[component][layer] = x[mask].double().sum(0)

    def block(i, x_in, x_out):
        add("layer", i, x_out - x_in)
        add("resid", i, x_out)

    def heads(i, x_in, _x_out):
        add("head", i, x_in.unflatten(-1, (n_heads(model), -1)))

    def modules(path: str) -> dict[int, torch.nn.Module]:
        return {i: part(b, path) for i, b in blocks.items()}

    blocks = dict(enumerate(_blocks(model)))
    with observe(blocks, block), observe(modules(model.arch.attn), lambda i, _x, out: add("attn", i, out)), \
            observe(modules(model.arch.attn_out), heads), \
            observe(modules(model.arch.mlp), lambda i, _x, out: add("mlp", i, out)):
        model.module(input_ids=batch.ids, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
                     use_cache=False, logits_to_keep=last_position(batch))
    n = int(mask.sum())
    return {c: {i: (s / n).float() for i, s in layers.items()} for c, layers in sums.items()}


def values(run: FamilyRun, which: str, component: str) -> dict[int, Tensor]:
    """The component's value at every layer on one of the family's batches, computed once per (family, seed)."""
    if which == "corrupt":
        corrupt_run(run)  # checks the family can be patched
    if which != "train" and component in ("resid", "layer"):  # already captured by the clean / corrupt run
        return run.memo(("acts", which, component), lambda: _from_residuals(run, which, component))
    return run.memo(("acts", which, component), lambda: capture_all(run, which, component))


def _from_residuals(run: FamilyRun, which: str, component: str) -> dict[int, Tensor]:
    layers = range(len(_blocks(run.model)))
    post = {i: run.clean_resid(i) if which == "clean" else corrupt_run(run)[1][i] for i in layers}
    if component == "resid":
        return post
    return {i: post[i] - resid_pre(run, which, i) for i in layers}


def at_site(acts: dict[int, Tensor], site: Site) -> Tensor:
    x = acts[site.layer]
    return x[:, :, list(site.heads)] if site.component == "head" else x


def resid_pre(run: FamilyRun, which: str, layer: int) -> Tensor:
    """The input of layer `layer` on the clean or corrupt eval batch."""
    if layer == 0:
        return embed(run.model, batch_of(run, which)).detach()
    return run.clean_resid(layer - 1) if which == "clean" else corrupt_run(run)[1][layer - 1]


Patch = tuple[str, Site, Tensor]  # (the eval run it acts on: "clean" or "corrupt", site, value at the site)


def patched_logits(run: FamilyRun, patches: list[Patch], prefix_reuse: bool = True) -> list[Tensor]:
    """Last-position logits of each patch: the clean or corrupt eval run with the component at its site set to
    its value. The patches share a component and a layer and go through one batched forward."""
    model, n = run.model, len(run.eval_batch.mask)
    component, layer = patches[0][1].component, patches[0][1].layer
    assert all((s.component, s.layer) == (component, layer) for _, s, _ in patches), "one component and layer"
    batch = run.eval_batch.repeat(len(patches))
    start = torch.cat([resid_pre(run, which, layer) for which, _, _ in patches])
    value = torch.cat([v for _, _, v in patches])
    block = _blocks(model)[layer]
    if component == "resid":
        logits = run_from(model, value, batch, layer + 1, prefix_reuse=prefix_reuse)
    elif component == "layer":
        logits = run_from(model, start + value, batch, layer + 1, prefix_reuse=prefix_reuse)
    elif component == "head":
        def set_heads(x: Tensor) -> Tensor:
            x = x.unflatten(-1, (n_heads(model), -1)).clone()
            for i, (_, site, v) in enumerate(patches):
                x[i * n:(i + 1) * n, :, list(site.heads)] = v.to(x.dtype)
            return x.flatten(-2)

        with replace(part(block, model.arch.attn_out), set_heads, inputs=True):
            logits = run_from(model, start, batch, layer, prefix_reuse=prefix_reuse)
    else:
        with replace(part(block, model.arch.attn if component == "attn" else model.arch.mlp), lambda _x: value):
            logits = run_from(model, start, batch, layer, prefix_reuse=prefix_reuse)
    return list(logits.split(n))
