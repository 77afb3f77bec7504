"""Where each decoder family keeps its parts and how its forward differs: one entry per `config.model_type`.

An entry names the modules the atlas touches (dotted paths) and, where the family's own
`forward` differs from Llama's, a small function beside it: which attention mask each layer
gets, whether rotary tables are per layer type, how the final logits are made. DESIGN §4
holds for every entry: `attn` and `mlp` are the modules whose outputs the block *adds* to the
residual stream (after Gemma's and OLMo-2's post-norms), `head` h is head h's slice of the
input of `attn_out` (the attention output projection).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from interventions.registry import Registry


def layer_types(config) -> list[str]:
    """Per layer: 'full_attention' or 'sliding_attention', as Llama's, Qwen's and Gemma's forwards pick the mask."""
    return list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)


def sliding_if_configured(config) -> list[str]:
    """Mistral, Phi-3: every layer gets the sliding-window mask when `config.sliding_window` is set."""
    kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
    return [kind] * config.num_hidden_layers


@dataclass(frozen=True)
class Widths:
    """A decoder's matmul widths, read from its config (interventions/flops.py counts FLOPs from them)."""

    d_model: int
    heads: int
    kv_heads: int  # fewer than heads with grouped-query attention
    head_dim: int
    d_ff: int
    gated: bool  # gate, up and down projections (else up and down)
    vocab: int


def grouped_widths(config) -> Widths:
    """Llama-like: grouped K/V heads, a gated MLP, head_dim where the config sets it (Gemma, Qwen3)."""
    heads = config.num_attention_heads
    return Widths(config.hidden_size, heads, getattr(config, "num_key_value_heads", None) or heads,
                  getattr(config, "head_dim", None) or config.hidden_size // heads, config.intermediate_size, True,
                  config.vocab_size)


def plain_widths(config) -> Widths:
    """GPT-2, GPT-NeoX: one K/V head per head, an ungated MLP of GPT-2's n_inner (default 4 d) or NeoX's
    intermediate_size (their configs may carry a num_key_value_heads that the model ignores)."""
    heads, d = config.num_attention_heads, config.hidden_size
    d_ff = (config.n_inner or 4 * d) if config.model_type == "gpt2" else config.intermediate_size
    return Widths(d, heads, heads, d // heads, d_ff, False, config.vocab_size)


def plain_logits(module: nn.Module, arch: Architecture, hidden: Tensor) -> Tensor:
    return part(module, arch.lm_head)(part(module, arch.final_norm)(hidden))


def softcapped_logits(module: nn.Module, arch: Architecture, hidden: Tensor) -> Tensor:
    """Gemma 2 / 3: cap * tanh(logits / cap) when `config.final_logit_softcapping` is set."""
    logits = plain_logits(module, arch, hidden)
    cap = module.config.final_logit_softcapping
    return logits if cap is None else torch.tanh(logits / cap) * cap


@dataclass(frozen=True)
class Architecture:
    """Attribute paths (dotted; model-level ones from the *ForCausalLM, per-layer ones from a decoder layer)."""

    layers: str  # nn.ModuleList of decoder layers
    embed: str  # token embedding (Gemma's scales by sqrt(d_model) itself)
    final_norm: str  # norm applied before the unembedding
    lm_head: str  # unembedding
    attn_out: str  # per layer: attention output projection; its input is the per-head concat (`head`)
    attn: str  # per layer: the module whose output the attention branch adds to the residual (`attn`)
    mlp: str  # per layer: the module whose output the MLP branch adds to the residual (`mlp`)
    lora_targets: tuple[str, ...]  # module names PEFT LoRA adapts by default
    rotary: str | None = "model.rotary_emb"  # rotary embedding shared by the layers (None: none)
    positions: str | None = None  # learned position embedding added to the token embedding (GPT-2)
    rotary_per_type: bool = False  # one rotary table per layer type (Gemma 3: local and global)
    attention: Callable[[object], list[str]] = layer_types  # config -> each layer's mask kind
    logits: Callable[[nn.Module, Architecture, Tensor], Tensor] = plain_logits  # final norm, lm_head (, cap)
    widths: Callable[[object], Widths] = grouped_widths  # config -> matmul widths (FLOPs)
    tiny: dict = field(default_factory=dict, compare=False)  # config overrides for its seeded model tiny-<model_type>

    def embed_tokens(self, module: nn.Module, ids: Tensor, pos: Tensor) -> Tensor:
        """resid_pre[0]: what the model's forward feeds its first layer."""
        hidden = part(module, self.embed)(ids)
        if self.positions:
            hidden = hidden + part(module, self.positions)(pos)
        return hidden

    def layer_kwargs(self, module: nn.Module, hidden: Tensor, mask: Tensor, pos: Tensor) -> list[dict]:
        """Per layer, the keyword arguments the model's own forward passes it (mask, positions, rotary)."""
        kinds = self.attention(module.config)[: len(part(module, self.layers))]
        masks = {kind: _mask(module.config, kind, hidden, mask, pos) for kind in set(kinds)}
        tables: dict[str, object] = {}
        if self.rotary:
            rotary = part(module, self.rotary)
            tables = ({kind: rotary(hidden, pos, kind) for kind in set(kinds)} if self.rotary_per_type
                      else dict.fromkeys(set(kinds), rotary(hidden, pos)))
        return [{"attention_mask": masks[kind], "position_ids": pos,
                 **({"position_embeddings": tables[kind]} if self.rotary else {})} for kind in kinds]


def _mask(config, kind: str, hidden: Tensor, mask: Tensor, pos: Tensor):
    """The 4-d attention mask of one kind, built by transformers' own mask functions."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    build = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
    cache_arg = "cache" if "cache" in inspect.signature(build).parameters else "past_key_values"
    return build(config=config, inputs_embeds=hidden, attention_mask=mask, position_ids=pos, **{cache_arg: None})


ARCHITECTURES: Registry[Architecture] = Registry("architecture")

_ATTN_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA = Architecture(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", lm_head="lm_head",
                     attn_out="self_attn.o_proj", attn="self_attn.o_proj", mlp="mlp", lora_targets=_ATTN_QKVO)
SANDWICH = replace(LLAMA, attn="post_attention_layernorm", mlp="post_feedforward_layernorm")  # norms after the branch
_SLIDING = {"sliding_window": 3}  # tiny models: shorter than the test prompts, so sliding layers really differ
_CAPPED = {"final_logit_softcapping": 0.5}  # tiny models' logits are ~0.4: a small cap so that capping shows

ARCHITECTURES.register("llama")(LLAMA)
ARCHITECTURES.register("qwen2")(LLAMA)
ARCHITECTURES.register("qwen3")(replace(LLAMA, tiny={"head_dim": 16}))  # QK-norm lives inside self_attn
ARCHITECTURES.register("mistral")(replace(LLAMA, attention=sliding_if_configured, tiny=_SLIDING))
ARCHITECTURES.register("phi3")(replace(LLAMA, attention=sliding_if_configured, lora_targets=("qkv_proj", "o_proj"),
                                       tiny=_SLIDING))
ARCHITECTURES.register("olmo2")(SANDWICH)  # post-norms only, QK-norm inside self_attn
ARCHITECTURES.register("gemma2")(replace(SANDWICH, logits=softcapped_logits,
                                        tiny={"head_dim": 16, **_SLIDING, **_CAPPED}))
ARCHITECTURES.register("gemma3_text")(replace(
    SANDWICH, logits=softcapped_logits, rotary_per_type=True,
    tiny={"head_dim": 16, **_SLIDING, **_CAPPED,
          "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]}))
ARCHITECTURES.register("gpt2")(Architecture(
    layers="transformer.h", embed="transformer.wte", positions="transformer.wpe", final_norm="transformer.ln_f",
    lm_head="lm_head", attn_out="attn.c_proj", attn="attn", mlp="mlp", lora_targets=("c_attn",), rotary=None,
    widths=plain_widths))
ARCHITECTURES.register("gpt_neox")(Architecture(  # parallel attention + MLP, partial rotary (inside attention)
    layers="gpt_neox.layers", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm", lm_head="lm_head",
    attn_out="attention.dense", attn="attention", mlp="mlp", lora_targets=("query_key_value", "dense"),
    rotary="gpt_neox.rotary_emb", widths=plain_widths))


def part(root: nn.Module, path: str) -> nn.Module:
    """`part(model, "model.layers")` -> the module at that dotted path."""
    for name in path.split("."):
        root = getattr(root, name)
    return root
