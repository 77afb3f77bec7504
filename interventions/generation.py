"""Judge-free generation metrics of steering: greedy steered continuations and what they show without a judge model.

A continuation is generated greedily (KV cache, batched, left padding) with each row's vectors
added to resid_post[L] at every position, prompt and generated tokens alike. It ends at the
first end-of-sequence token. Metrics per trial:
  target_hit_rate  share of eval items whose continuation contains the target token;
  fluency_nll      mean over items of the mean per-token NLL of the continuation under the unsteered model;
  repetition       mean over items of the share of 4-grams that repeat an earlier 4-gram of the same continuation;
  distinct_2       distinct bigrams / all bigrams over the trial's continuations together (Li et al. 2016);
  neutral_kl       KL(clean || steered) of the next token after each neutral prompt shipped in
                   data/neutral_prompts.txt, averaged: the side effect on unrelated text.
"""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from importlib import resources
from typing import Iterator

import torch
from torch import Tensor

from interventions.architectures import part
from interventions.decoding import decode, eos_ids
from interventions.forward import Batch, clean_run, encode, last_position, position_ids
from interventions.hooks import capture, replace
from interventions.models import Model
from interventions.prompting import left_padded

NLL_CHUNK = 32  # rows per unembedding of the continuation positions (bounds rows x tokens x vocab floats)


@lru_cache(maxsize=1)
def neutral_prompts() -> tuple[str, ...]:
    text = resources.files("interventions").joinpath("data/neutral_prompts.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip() and not line.startswith("#"))


@contextmanager
def added(model: Model, deltas: dict[int, Tensor], mask: Tensor | None = None) -> Iterator[None]:
    """While the block runs, deltas[L] (rows, d_model) is added to resid_post[L] at every position (where mask is 1,
    if given: pads stay)."""
    blocks = part(model.module, model.arch.layers)
    with ExitStack() as stack:
        for layer, delta in deltas.items():
            def add(h: Tensor, delta: Tensor = delta) -> Tensor:
                keep = 1 if mask is None else mask[..., None].to(h.dtype)
                return h + keep * delta[:, None, :].to(h.dtype)

            stack.enter_context(replace(blocks[layer], add))
        yield


def greedy(model: Model, batch: Batch, tokens: int, deltas: dict[int, Tensor] | None = None) -> Tensor:
    """Greedy continuation ids (rows, <= tokens) of a left-padded batch, with `deltas` added while generating
    (decoding.decode: KV cache, padding after a row's end-of-sequence token)."""
    with added(model, deltas or {}):
        return decode(model, batch, tokens).ids


def until_eos(ids: Tensor, eos: list[int]) -> list[list[int]]:
    """Each row's tokens before its first end-of-sequence token."""
    rows = []
    for row in ids.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def prompt_rows(batch: Batch) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.ids.cpu(), batch.mask.cpu())]


@torch.no_grad()
def continuation_nll(model: Model, prompts: list[list[int]], continuations: list[list[int]]) -> Tensor:
    """Mean per-token NLL (rows,) of each continuation after its prompt under the unsteered model (nan if empty)."""
    longest = max((len(c) for c in continuations), default=0)
    if longest == 0:
        return torch.full((len(prompts),), float("nan"))
    tok = model.tokenizer
    batch = left_padded([p + c for p, c in zip(prompts, continuations)],
                        tok.pad_token_id if tok.pad_token_id is not None else 0).to(model.device)
    last = part(model.module, model.arch.layers)[-1]
    with capture({0: last}) as seen:  # resid_post of the last layer; the architecture's own unembedding below
        model.module(input_ids=batch.ids, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
                     use_cache=False, logits_to_keep=last_position(batch))
    hidden = seen[0][:, -longest - 1:-1]  # (rows, longest, d): the positions that predict the continuation tokens
    targets = torch.zeros(len(prompts), longest, dtype=torch.long)
    real = torch.zeros(len(prompts), longest)
    for r, c in enumerate(continuations):  # right-aligned: a continuation ends at the last position
        if c:
            targets[r, longest - len(c):] = torch.tensor(c)
            real[r, longest - len(c):] = 1
    nll = torch.empty(len(prompts), longest)
    for start in range(0, len(prompts), NLL_CHUNK):
        rows = slice(start, start + NLL_CHUNK)
        logits = model.arch.logits(model.module, model.arch, hidden[rows].contiguous())  # final norm, lm_head (, cap)
        logp = logits.float().log_softmax(-1)  # (chunk, longest, vocab)
        nll[rows] = -logp.gather(-1, targets[rows, :, None].to(logp.device))[..., 0].cpu()
    return (nll * real).sum(1) / real.sum(1)  # 0/0 = nan for an empty continuation


def known_nll(run, continuations: list[list[int]]) -> Tensor:
    """continuation_nll of the eval items' continuations (row r continues eval item r % n_eval), each distinct
    (item, continuation) computed once per (family, seed): weak vectors often leave the unsteered continuation."""
    seen: dict[tuple, float] = run.memo(("continuation_nll",), dict)
    prompts = prompt_rows(run.eval_batch)
    keys = [(r % len(prompts), tuple(c)) for r, c in enumerate(continuations)]
    todo = list(dict.fromkeys(k for k in keys if k not in seen))
    if todo:
        values = continuation_nll(run.model, [prompts[j] for j, _ in todo], [list(c) for _, c in todo])
        seen.update(zip(todo, values.tolist()))
    return torch.tensor([seen[k] for k in keys], dtype=torch.float64)


def ngrams(seq: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def repetition(seq: list[int], n: int = 4) -> float:
    """Share of the n-grams of `seq` that repeat an earlier one (nan if it has none)."""
    grams = ngrams(seq, n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else float("nan")


def distinct_n(seqs: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over the sequences together (nan if there are none)."""
    grams = [g for s in seqs for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def _nanmean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def text_metrics(continuations: list[list[int]], targets: list[int], nll: Tensor) -> dict[str, float]:
    """target_hit_rate, fluency_nll (from per-row NLLs), repetition and distinct_2 of one trial's continuations."""
    return {
        "target_hit_rate": sum(t in c for t, c in zip(targets, continuations)) / len(continuations),
        "fluency_nll": _nanmean(nll.tolist()),
        "repetition": _nanmean([repetition(c) for c in continuations]),
        "distinct_2": distinct_n(continuations),
    }


def neutral_clean(model: Model) -> tuple[Batch, Tensor, dict[int, Tensor]]:
    """The neutral prompts as a batch, their clean last-position logits and resid_post of every layer."""
    batch = encode(model.tokenizer, list(neutral_prompts())).to(model.device)
    logits, resid = clean_run(model, batch)
    return batch, logits, resid


def rows_of(deltas: list[dict[int, Tensor]], n: int) -> dict[int, Tensor]:
    """Per layer, each point's delta repeated for its n rows: (points x n, d_model)."""
    return {layer: torch.stack([d[layer] for d in deltas]).repeat_interleave(n, 0) for layer in deltas[0]}


def _clean_reference(run, tokens: int) -> tuple[list[list[int]], dict[str, float]]:
    """The unsteered continuations of the eval items and their metrics (suffix _clean), once per (family, seed)."""
    def compute():
        model = run.model
        continuations = until_eos(greedy(model, run.eval_batch, tokens), eos_ids(model))
        metrics = text_metrics(continuations, run.target.tolist(), known_nll(run, continuations))
        return continuations, {f"{k}_clean": v for k, v in metrics.items()}

    return run.memo(("generation_clean", tokens), compute)


def generation_results(run, deltas: list[dict[int, Tensor]], tokens: int,
                       neutral_kl: list[float]) -> list[tuple[dict[str, float], dict[str, bytes]]]:
    """Per point of a pack: its generation metrics (with the unsteered reference) and a continuations.txt artifact."""
    model, n = run.model, len(run.split.eval)
    ids = greedy(model, run.eval_batch.repeat(len(deltas)), tokens, rows_of(deltas, n))
    continuations = until_eos(ids, eos_ids(model))
    nll = known_nll(run, continuations)
    clean, reference = _clean_reference(run, tokens)
    out = []
    for i, kl_i in enumerate(neutral_kl):
        mine = continuations[i * n:(i + 1) * n]
        metrics = {**text_metrics(mine, run.target.tolist(), nll[i * n:(i + 1) * n]), "neutral_kl": kl_i, **reference}
        out.append((metrics, {"continuations.txt": _readable(model, run.split.eval, clean, mine)}))
    return out


SHOWN = 3  # continuations per cell written for a person to read


def _readable(model: Model, items, clean: list[list[int]], steered: list[list[int]]) -> bytes:
    decode = model.tokenizer.decode
    shown = list(zip(items, clean, steered))[:SHOWN]
    blocks = [f"prompt:    {item.prompt!r}  (target {item.target!r})\n"
              f"unsteered: {decode(c)!r}\nsteered:   {decode(s)!r}" for item, c, s in shown]
    return ("\n\n".join(blocks) + "\n").encode("utf-8")


LOOP_SPAN, LOOP_PERIOD, LOOP_REPEATS = 16, 16, 3  # the loop flag's thresholds (docs/kinds.md#generation)


def looping(seq: list[int], span: int = LOOP_SPAN, period: int = LOOP_PERIOD, repeats: int = LOOP_REPEATS) -> bool:
    """Whether `seq` ends in a loop: for some p <= `period`, its last max(span, repeats * p) tokens are periodic with
    period p (each equals the token p before it), i.e. one block of p tokens repeated until the end."""
    for p in range(1, period + 1):
        n = max(span, repeats * p)
        if len(seq) >= n and all(seq[i] == seq[i - p] for i in range(len(seq) - n + p, len(seq))):
            return True
    return False
