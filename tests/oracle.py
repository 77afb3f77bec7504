"""Independent computations for the tests: plain HF forwards, one prompt at a time, with hand-written hooks."""
from __future__ import annotations

import torch


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

        handle = model.module.model.layers[layer].register_forward_hook(hook)
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
