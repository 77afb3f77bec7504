"""Where each decoder family keeps its parts: one entry per `config.model_type`."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from interventions.registry import Registry


@dataclass(frozen=True)
class Architecture:
    """Attribute paths (dotted, from the *ForCausalLM module) of the parts the atlas touches."""

    layers: str  # nn.ModuleList of decoder layers
    embed: str  # token embedding
    final_norm: str  # norm applied before the unembedding
    lm_head: str  # unembedding
    rotary: str  # rotary position embedding module shared by the layers
    attn_out: str  # per layer: attention output projection (its input is the per-head concat)
    mlp: str  # per layer: the MLP
    lora_targets: tuple[str, ...]  # module names PEFT LoRA adapts by default


ARCHITECTURES: Registry[Architecture] = Registry("architecture")

_LLAMA_LIKE = Architecture(
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    rotary="model.rotary_emb",
    attn_out="self_attn.o_proj",
    mlp="mlp",
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
)
ARCHITECTURES.register("llama")(_LLAMA_LIKE)
ARCHITECTURES.register("qwen2")(_LLAMA_LIKE)


def part(root: nn.Module, path: str) -> nn.Module:
    """`part(model, "model.layers")` -> the module at that dotted path."""
    for name in path.split("."):
        root = getattr(root, name)
    return root
