"""Batched forward passes: left-padded encoding, clean runs with captured residuals, runs from a layer on.

Only the last position is unembedded. `run_from(model, resid, batch, start)` feeds
`resid` (the input of layer `start`, i.e. `resid_post[start-1]`) through the remaining
layers, so work before an intervened layer is never repeated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interventions.architectures import part
from interventions.hooks import capture
from interventions.models import Model


@dataclass(frozen=True)
class Batch:
    ids: Tensor  # (batch, pos) token ids, left-padded
    mask: Tensor  # (batch, pos) 1 for tokens, 0 for padding

    def to(self, device) -> "Batch":
        return Batch(self.ids.to(device), self.mask.to(device))

    def repeat(self, k: int) -> "Batch":
        """k copies stacked along the batch: one forward for k packed trials."""
        return Batch(self.ids.repeat(k, 1), self.mask.repeat(k, 1))


def encode(tokenizer, prompts: list[str], suffix: list[int] | None = None) -> Batch:
    """Tokenise with the tokenizer's defaults, append one suffix id per prompt, left-pad."""
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    if suffix is not None:
        rows = [row + [extra] for row, extra in zip(rows, suffix)]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return Batch(ids, mask)


def single_token_ids(tokenizer, words: list[str]) -> Tensor:
    return torch.tensor([tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words])


def position_ids(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0


def last_position(batch: Batch) -> Tensor:
    """`logits_to_keep` for the last position only, as an index (a contiguous copy): the strided slice that
    `logits_to_keep=1` gives sends torch 2.13's CPU linear to a path that expands the unembedding weight per
    row (8x slower in float32 at a 150k vocabulary; 200x and gigabytes in bfloat16 / float16)."""
    return torch.tensor([batch.ids.shape[1] - 1], device=batch.ids.device)


@torch.no_grad()
def clean_run(model: Model, batch: Batch) -> tuple[Tensor, dict[int, Tensor]]:
    """Last-position logits (batch, vocab) and resid_post[L] (batch, pos, d_model) for every layer."""
    layers = part(model.module, model.arch.layers)
    with capture(dict(enumerate(layers))) as resid:
        out = model.module(
            input_ids=batch.ids, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
            use_cache=False, logits_to_keep=last_position(batch),
        )
    return out.logits[:, -1].float(), dict(resid)


def embed(model: Model, batch: Batch) -> Tensor:
    """resid_pre[0]: the input of layer 0 (token embedding, plus learned positions where the family has them)."""
    return model.arch.embed_tokens(model.module, batch.ids, position_ids(batch.mask))


@torch.no_grad()
def run_from(model: Model, resid: Tensor, batch: Batch, start: int, skip: frozenset[int] = frozenset(), *,
             prefix_reuse: bool = True) -> Tensor:
    """Last-position logits (batch, vocab) of layers start..end applied to resid (batch, pos, d_model).

    Layers in `skip` pass the residual through unchanged. With `prefix_reuse` off, layers
    0..start-1 first run again on `batch`'s tokens, as a full hooked forward would: what a trial
    costs without the cached residuals (benchmarks measure it); the result is the same.
    Each layer gets what the model's own forward gives it (masks, rotary tables: the architecture table).
    """
    resid = resid.to(model.dtype)
    pos = position_ids(batch.mask)
    layers = part(model.module, model.arch.layers)
    kwargs = model.arch.layer_kwargs(model.module, resid, batch.mask, pos)

    def through(hidden: Tensor, indices: range) -> Tensor:
        for index in indices:
            if index not in skip:
                out = layers[index](hidden, **kwargs[index])
                hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    if not prefix_reuse and start > 0:
        through(embed(model, batch), range(start))  # recomputed, then replaced by resid
    return unembed_last(model, through(resid, range(start, len(layers))))


def unembed_last(model: Model, hidden: Tensor) -> Tensor:
    """Logits (batch, vocab) of the last position: lm_head(final_norm(hidden[:, -1])) (Gemma: soft-capped)."""
    last = hidden[:, -1:].to(model.dtype).contiguous()  # contiguous: see last_position
    return model.arch.logits(model.module, model.arch, last)[:, -1].float()
