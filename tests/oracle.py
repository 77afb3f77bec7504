"""Independent computations for the tests: plain HF forwards, one prompt at a time, with hand-written hooks."""
from __future__ import annotations

import torch

from interventions.ablation import item_generator, resample_choice
from interventions.architectures import part
from interventions.components import COMPONENTS, Site


@torch.no_grad()
def last_logits(model, prompt: str, add_at_layer: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Logits (vocab,) after `prompt`, optionally adding a vector to decoder layer L's output at every position."""
    ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    handle = None
    if add_at_layer is not None:
        layer, vector = add_at_layer

        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (output[0] + vector, *output[1:])
            return output + vector

        handle = part(model.module, model.arch.layers)[layer].register_forward_hook(hook)
    try:
        return model.module(input_ids=ids).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()


def token(model, word: str) -> int:
    (tid,) = model.tokenizer(word, add_special_tokens=False)["input_ids"]
    return tid


def logit_diff(model, logits: torch.Tensor, target: str, distractor: str) -> float:
    return float(logits[token(model, target)] - logits[token(model, distractor)])


# --- ablation oracle: one prompt at a time, a full HF forward, hooks written here from the module paths ----------

def _modules(model, layer: int):
    """The block, its attention output projection (heads are its input), and the two branches' last modules."""
    block = part(model.module, model.arch.layers)[layer]
    return block, part(block, model.arch.attn_out), part(block, model.arch.attn), part(block, model.arch.mlp)


def _out(o) -> torch.Tensor:
    return o[0] if isinstance(o, tuple) else o  # GPT-2 / NeoX attention modules return (output, weights)


def _set(value: torch.Tensor):
    return lambda m, i, o: (value[None], *o[1:]) if isinstance(o, tuple) else value[None]


def _ids(model, prompt: str) -> torch.Tensor:
    return model.tokenizer(prompt, return_tensors="pt")["input_ids"]


@torch.no_grad()
def component_value(model, prompt: str, layer: int, component: str) -> torch.Tensor:
    """The component's value over the prompt's positions: (pos, d) or, for heads, (pos, n_heads, head_dim)."""
    block, o_proj, attn, mlp = _modules(model, layer)
    seen = {}
    hooks = [
        block.register_forward_pre_hook(lambda m, a, k: seen.__setitem__("in", (a[0] if a else k["hidden_states"])[0]),
                                        with_kwargs=True),
        block.register_forward_hook(lambda m, i, o: seen.__setitem__("out", _out(o)[0])),
        o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("o_in", a[0][0])),
        attn.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", _out(o)[0])),
        mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp", _out(o)[0])),
    ]
    try:
        model.module(input_ids=_ids(model, prompt))
    finally:
        for h in hooks:
            h.remove()
    if component == "head":
        return seen["o_in"].unflatten(-1, (model.config.num_attention_heads, -1))
    values = {"resid": seen["out"], "layer": seen["out"] - seen["in"], "attn": seen["attn"], "mlp": seen["mlp"]}
    return values[component]


@torch.no_grad()
def logits_with(model, prompt: str, layer: int, component: str, value: torch.Tensor, heads=()) -> torch.Tensor:
    """Last-position logits (vocab,) with the component of `layer` set to `value` (pos, ...) at every position."""
    block, o_proj, attn, mlp = _modules(model, layer)
    layer_in = {}

    def set_block(m, i, o):
        new = value if component == "resid" else layer_in["x"] + value
        return (new[None], *o[1:]) if isinstance(o, tuple) else new[None]

    def set_heads(m, args):
        x = args[0].unflatten(-1, (model.config.num_attention_heads, -1)).clone()
        x[0][:, list(heads)] = value
        return (x.flatten(-2),)

    if component in ("resid", "layer"):
        hooks = [block.register_forward_pre_hook(
            lambda m, a, k: layer_in.__setitem__("x", (a[0] if a else k["hidden_states"])[0]), with_kwargs=True),
            block.register_forward_hook(set_block)]
    elif component == "head":
        hooks = [o_proj.register_forward_pre_hook(set_heads)]
    else:
        hooks = [(attn if component == "attn" else mlp).register_forward_hook(_set(value))]
    try:
        return model.module(input_ids=_ids(model, prompt)).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()


# --- each ablation method's replacement, built by hand ---------------------------------------------------------

SEED = 3
VALUES: dict = {}  # the oracle's component values, per (model, prompt, layer, component)


def expected(model, run, site: Site, method: str, positions: str = "all") -> torch.Tensor:
    """Per eval item, the method's replacement built by hand, run through a plain forward with hooks; with
    `positions` "last" or "all_but_first", the item's other positions keep their own value."""
    component, layer = site.component, site.layer
    heads = list(site.heads)

    def val(prompt):
        key = (id(model), prompt, layer, component)
        if key not in VALUES:
            VALUES[key] = component_value(model, prompt, layer, component)
        v = VALUES[key]
        return v[:, heads] if component == "head" else v

    train = [i.prompt for i in run.split.train]
    rows = []
    for i, item in enumerate(run.split.eval):
        prompt = item.corrupt_prompt if method == "clean_to_corrupt" else item.prompt
        base = val(prompt)
        n = base.shape[0]
        if method == "zero":
            new = torch.zeros_like(base)
        elif method == "mean":
            new = torch.cat([val(p) for p in train]).double().mean(0).float().expand_as(base)
        elif method == "position_mean":  # position -k: mean over the train prompts at least k long
            trains, new = [val(p) for p in train], base.clone()
            overall = torch.cat(trains).double().mean(0)
            for k in range(1, n + 1):
                at_k = [t[-k].double() for t in trains if t.shape[0] >= k]
                new[-k] = (torch.stack(at_k).mean(0) if at_k else overall).float()
        elif method == "resample":
            lens = [val(p).shape[0] for p in train]
            j = resample_choice(SEED, site, i, n, lens)
            new, k = base.clone(), min(n, lens[j])
            new[-k:] = val(train[j])[-k:]
        elif method == "random":
            noise = torch.randn(base.shape, generator=item_generator(SEED, site, i), dtype=torch.float64)
            new = (noise / noise.norm(dim=-1, keepdim=True) * base.double().norm(dim=-1, keepdim=True)).float()
        elif method == "corrupt_to_clean":
            new = val(item.corrupt_prompt)
        else:  # clean_to_corrupt
            new = val(item.prompt)
        if positions == "last":
            new = torch.cat([base[:-1], new[-1:]])
        elif positions == "all_but_first":
            new = torch.cat([base[:1], new[1:]])
        rows.append(logits_with(model, prompt, layer, component, new, heads))
    return torch.stack(rows)


def sites(layer: int):
    return [Site(c, layer, (1,) if c == "head" else ()) for c in COMPONENTS]
