"""Decoding: the DECODINGS registry (greedy, sampled), chat-templated prompts, and a timed KV-cache decode loop.

The loop reads only the model's forward (any dtype, any device, however it was loaded): a prefill
of the left-padded prompts (position ids from the mask), then one token per step with the KV
cache, until every row has emitted an end-of-sequence token or `tokens` new tokens. A finished
row is fed padding (masked out) and its later tokens are dropped by `until_eos`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from interventions.forward import Batch, position_ids
from interventions.models import Model
from interventions.prompting import left_padded
from interventions.registry import Registry

Choose = Callable[[Tensor, float, "torch.Generator | None"], Tensor]  # (logits (rows, vocab) float, T, gen) -> ids
DECODINGS: Registry[Choose] = Registry("decoding")


@DECODINGS.register("greedy")
def greedy_choice(logits: Tensor, temperature: float, gen: torch.Generator | None) -> Tensor:
    """The argmax token (ties: the lowest id)."""
    return logits.argmax(-1)


@DECODINGS.register("sampled")
def sampled_choice(logits: Tensor, temperature: float, gen: torch.Generator | None) -> Tensor:
    """A draw from softmax(logits / temperature) over the whole vocabulary, on the CPU with `gen` (reproducible)."""
    probs = (logits.double().cpu() / temperature).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0].to(logits.device)


def chat_rows(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids per prompt: the tokenizer's chat template (one user turn, generation prompt added) when it has
    one, tokenised without adding special tokens again; else the raw prompt with the tokenizer's defaults."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [tokenizer(p)["input_ids"] for p in prompts]


def eos_ids(model: Model) -> list[int]:
    eos = model.module.generation_config.eos_token_id
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


def pad_id(model: Model) -> int:
    tok, eos = model.tokenizer, eos_ids(model)
    return tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)


def prompt_batch(model: Model, prompts: list[str]) -> Batch:
    return left_padded(chat_rows(model.tokenizer, prompts), pad_id(model)).to(model.device)


@dataclass(frozen=True)
class Decoded:
    ids: Tensor  # (rows, steps) new token ids; after a row's first EOS, padding
    prefill_s: float  # the prompt's forward (which also gives the first new token)
    decode_s: float  # every later step
    decode_tokens: int  # tokens produced by those later steps for rows still running


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode(model: Model, batch: Batch, tokens: int, decoding: str = "greedy", temperature: float = 1.0,
           gen: torch.Generator | None = None) -> Decoded:
    """Up to `tokens` new tokens per row of a left-padded batch, chosen by DECODINGS[decoding]."""
    choose, eos, pad = DECODINGS.get(decoding), set(eos_ids(model)), pad_id(model)
    mask, pos = batch.mask, position_ids(batch.mask)
    rows = len(batch.ids)
    done = torch.zeros(rows, dtype=torch.bool, device=batch.ids.device)
    out, counted = [], 0
    _sync(model.device)
    start = time.perf_counter()
    step_in, cache, prefill_s = batch.ids, None, 0.0
    for step in range(tokens):
        res = model.module(input_ids=step_in, attention_mask=mask, position_ids=pos, cache=cache,
                           use_cache=True, logits_to_keep=torch.tensor([step_in.shape[1] - 1], device=mask.device))
        cache = res.cache
        nxt = choose(res.logits[:, -1].float(), temperature, gen)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        if step == 0:
            _sync(model.device)
            prefill_s, start = time.perf_counter() - start, time.perf_counter()
        else:
            counted += int((~done).sum())
        out.append(nxt)
        done = done | torch.isin(nxt, torch.tensor(sorted(eos), dtype=nxt.dtype, device=nxt.device))
        if bool(done.all()):
            break
        step_in = nxt[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # finished rows too: their tokens are dropped
        pos = pos[:, -1:] + 1
    _sync(model.device)
    decode_s = time.perf_counter() - start if len(out) > 1 else 0.0
    return Decoded(torch.stack(out, 1), prefill_s, decode_s, counted)
