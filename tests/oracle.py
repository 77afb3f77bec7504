"""Independent computations for the tests: plain HF forwards, one prompt at a time, with hand-written hooks."""
from __future__ import annotations

import pytest
import torch

from interventions.ablation import ablated_logits, item_generator, resample_choice
from interventions.architectures import part
from interventions.components import COMPONENTS, Site
from interventions.hooks import count_hooks
from interventions.kinds import run_kind
from interventions.steering import steering_vector


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


def _position_mean(c: dict) -> torch.Tensor:
    """Position -k: the mean over the train prompts at least k long (else the all-position mean)."""
    trains, new = [c["val"](p) for p in c["train"]], c["base"].clone()
    overall = torch.cat(trains).double().mean(0)
    for k in range(1, new.shape[0] + 1):
        at_k = [t[-k].double() for t in trains if t.shape[0] >= k]
        new[-k] = (torch.stack(at_k).mean(0) if at_k else overall).float()
    return new


def _resample(c: dict) -> torch.Tensor:
    base, n = c["base"], c["base"].shape[0]
    lens = [c["val"](p).shape[0] for p in c["train"]]
    j = resample_choice(SEED, c["site"], c["i"], n, lens)
    new, k = base.clone(), min(n, lens[j])
    new[-k:] = c["val"](c["train"][j])[-k:]
    return new


def _random(c: dict) -> torch.Tensor:
    base = c["base"]
    noise = torch.randn(base.shape, generator=item_generator(SEED, c["site"], c["i"]), dtype=torch.float64)
    return (noise / noise.norm(dim=-1, keepdim=True) * base.double().norm(dim=-1, keepdim=True)).float()


# Every ablation method's oracle: (the eval run it acts on, its replacement of one item's value built by hand from
# c: val(prompt) -> the component's value, base (the value replaced), train (prompts), item, i, site). A method
# without an entry here fails tests/test_ablation.py::test_every_ablation_method_has_an_oracle.
ORACLES = {
    "zero": ("clean", lambda c: torch.zeros_like(c["base"])),
    "mean": ("clean", lambda c: torch.cat([c["val"](p) for p in c["train"]]).double().mean(0).float()
             .expand_as(c["base"])),
    "position_mean": ("clean", _position_mean),
    "resample": ("clean", _resample),
    "random": ("clean", _random),
    "corrupt_to_clean": ("clean", lambda c: c["val"](c["item"].corrupt_prompt)),  # noising
    "clean_to_corrupt": ("corrupt", lambda c: c["val"](c["item"].prompt)),  # denoising
}


def expected(model, run, site: Site, method: str, positions: str = "all") -> torch.Tensor:
    """Per eval item, the method's replacement built by hand (ORACLES), run through a plain forward with hooks; with
    `positions` "last" or "all_but_first", the item's other positions keep their own value."""
    if method not in ORACLES:
        raise NotImplementedError(f"ablation method {method!r} has no oracle: add its hand-built replacement to "
                                  "ORACLES in tests/oracle.py")
    acts_on, replacement = ORACLES[method]
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
        prompt = item.corrupt_prompt if acts_on == "corrupt" else item.prompt
        base = val(prompt)
        new = replacement({"val": val, "base": base, "train": train, "item": item, "i": i, "site": site})
        if positions == "last":
            new = torch.cat([base[:-1], new[-1:]])
        elif positions == "all_but_first":
            new = torch.cat([base[:1], new[1:]])
        rows.append(logits_with(model, prompt, layer, component, new, heads))
    return torch.stack(rows)


def sites(layer: int):
    return [Site(c, layer, (1,) if c == "head" else ()) for c in COMPONENTS]


# --- the library's results against the oracle: the checks the suites share -------------------------------------

def hand_steered_ld_delta(ctx, layer: int, strength: float, vector_type: str) -> float:
    """The mean over the eval items of the steered minus the clean logit difference, each item its own plain forward,
    the steering vector (scaled as a trial scales it: strength x r_L) added by a hand-written hook."""
    model = ctx.model
    vector = strength * ctx.family.resid_norm(layer) * steering_vector(ctx, layer, vector_type)
    deltas = []
    for item in ctx.family.split.eval:
        clean = last_logits(model, item.prompt)
        steered = last_logits(model, item.prompt, add_at_layer=(layer, vector))
        deltas.append(logit_diff(model, steered, item.target, item.distractor)
                      - logit_diff(model, clean, item.target, item.distractor))
    return sum(deltas) / len(deltas)


def assert_steering_equals_hook(ctx, layer: int, strength: float, vector_type: str, abs_tol: float = 1e-4) -> dict:
    """The steering trial's ld_delta is the hand-hooked one (hand_steered_ld_delta) and the trial leaves no hook;
    returns the trial's metrics (for a test's check that the steering moved something)."""
    out = run_kind("steering", ctx, {"layer": layer, "strength": strength, "vector_type": vector_type}).metrics
    assert out["ld_delta"] == pytest.approx(hand_steered_ld_delta(ctx, layer, strength, vector_type), abs=abs_tol)
    assert count_hooks(ctx.model.module) == 0
    return out


def assert_ablation_equals_oracle(ctx, layers, method: str, atol: float = 1e-4, logprob_atol: float | None = None):
    """Every component of each layer ablated by `method` (ablated_logits) against the method's replacement built by
    hand (expected): logits within `atol`, or, with `logprob_atol`, log-probabilities within it (real weights: per
    prompt float32 noise grows with the vocabulary); no hook left on the model."""
    model = ctx.model
    for layer in layers:
        for site in sites(layer):
            got = ablated_logits(ctx.family, SEED, site, method)
            want = expected(model, ctx.family, site, method)
            if logprob_atol is None:
                torch.testing.assert_close(got, want, atol=atol, rtol=0, msg=f"{site} {method}")
            else:
                diff = (got.log_softmax(-1) - want.log_softmax(-1)).abs().max()
                assert diff <= logprob_atol, f"{site} {method}: {diff}"
    assert count_hooks(model.module) == 0
