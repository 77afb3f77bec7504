"""Per-actor trial state: one family's tokenised items and clean baselines, computed once, reused by trials."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, TypeVar

import torch
from torch import Tensor

from interventions.cache import tensor_bytes
from interventions.families import Split
from interventions.forward import Batch, clean_run, encode, single_token_ids
from interventions.models import Model

V = TypeVar("V")


@dataclass(frozen=True)
class TrainActs:
    """Last-position resid_post[L] over the train items: (n_train, d_model) each."""

    with_target: Tensor  # prompt + target
    with_distractor: Tensor  # prompt + distractor
    prompt: Tensor  # prompt alone (its norms give r_L)


class FamilyRun:
    """One (family, seed) on one model. Every tensor is computed on first use and cached."""

    def __init__(self, model: Model, split: Split) -> None:
        self.model, self.split = model, split
        self._memo: dict[tuple, object] = {}

    def memo(self, key: tuple, compute: Callable[[], V]) -> V:
        """Cache a derived value (a steering vector, say) for the trials that share it."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[return-value]

    def _words(self, items, key: str) -> Tensor:
        return single_token_ids(self.model.tokenizer, [getattr(i, key) for i in items]).to(self.model.device)

    def encode(self, prompts: list[str], suffix: Tensor | None = None) -> Batch:
        """Prompts (and one suffix token each) as a left-padded batch on the model's device."""
        tokens = None if suffix is None else suffix.tolist()
        return encode(self.model.tokenizer, prompts, tokens).to(self.model.device)

    @cached_property
    def eval_batch(self) -> Batch:
        return self.encode([i.prompt for i in self.split.eval])

    @cached_property
    def target(self) -> Tensor:
        return self._words(self.split.eval, "target")  # (n_eval,)

    @cached_property
    def distractor(self) -> Tensor:
        return self._words(self.split.eval, "distractor")  # (n_eval,)

    @cached_property
    def _clean(self) -> tuple[Tensor, dict[int, Tensor]]:
        return clean_run(self.model, self.eval_batch)

    @property
    def clean_logits(self) -> Tensor:
        return self._clean[0]  # (n_eval, vocab)

    def clean_resid(self, layer: int) -> Tensor:
        return self._clean[1][layer]  # resid_post[layer]: (n_eval, pos, d_model)

    @cached_property
    def _train(self) -> dict[int, TrainActs]:
        train = self.split.train
        prompts = [i.prompt for i in train]
        runs = [
            clean_run(self.model, self.encode(prompts, suffix))[1]
            for suffix in (self._words(train, "target"), self._words(train, "distractor"))
        ]
        runs.append(clean_run(self.model, self.encode(prompts))[1])
        # a copy of the last position: a view would keep every position's residual alive (n_train x pos x d_model
        # per layer and run, GiBs in a long length bucket)
        return {layer: TrainActs(*(run[layer][:, -1].clone() for run in runs)) for layer in runs[0]}

    def train_acts(self, layer: int) -> TrainActs:
        return self._train[layer]

    def resid_norm(self, layer: int) -> float:
        """r_L: mean norm of resid_post[L] at the last position over the train prompts."""
        return float(self._train[layer].prompt.norm(dim=-1).mean())

    def nbytes(self) -> int:
        """Bytes of the tensors computed and kept so far (baselines, memos); the model's weights are not counted."""
        return tensor_bytes({k: v for k, v in vars(self).items() if k not in ("model", "split")})


@dataclass
class TrialContext:
    """What a kind's trial function gets: the model, its family at this seed, and the sweep's other families."""

    model: Model
    seed: int
    family: FamilyRun
    others: list[FamilyRun] = field(default_factory=list)
    prefix_reuse: bool = True  # runs start at the cached residual of layer L (off: the layers below run again)
    options: dict = field(default_factory=dict)  # the spec sections the kind declares in `options` (None: off)


def seeded_generator(*parts: int) -> torch.Generator:
    """A torch generator whose seed depends only on the given integers."""
    seed = 0
    for value in parts:
        seed = (seed * 1_000_003 + int(value)) % (2**63)
    return torch.Generator().manual_seed(seed)
