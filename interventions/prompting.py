"""The prompting baseline of steering: the eval items with k train demonstrations (prompt + target) prepended.

Its effect is measured like a steering vector's: ld_delta = mean over eval items of the
k-shot LD minus the zero-shot LD, with the same per-item reliability metrics. The demonstrations
are the family's first k train items (a seeded draw), the same for every eval item, each its
prompt's token ids followed by its target's single token id and a newline; the eval prompt
follows the last one. Only the first segment gets the tokenizer's special tokens (a BOS, say).
"""
from __future__ import annotations

import torch

from interventions.context import FamilyRun
from interventions.forward import Batch, clean_run, single_token_ids


def kshot_rows(run: FamilyRun, shots: int) -> list[list[int]]:
    """Token ids of each eval item's k-shot prompt."""
    tok = run.model.tokenizer
    demos = run.split.train[:shots]
    targets = single_token_ids(tok, [d.target for d in demos]).tolist() if demos else []
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    prefix: list[int] = []
    for j, (demo, target) in enumerate(zip(demos, targets)):
        prefix += tok(demo.prompt, add_special_tokens=j == 0)["input_ids"] + [target] + newline
    return [prefix + tok(item.prompt, add_special_tokens=not demos)["input_ids"] for item in run.split.eval]


def left_padded(rows: list[list[int]], pad: int) -> Batch:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return Batch(ids, mask)


def kshot_logits(run: FamilyRun, shots: int) -> torch.Tensor:
    """Last-position logits (n_eval, vocab) of the eval items after k demonstrations."""
    tok = run.model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batch = left_padded(kshot_rows(run, shots), pad).to(run.model.device)
    return clean_run(run.model, batch)[0]
