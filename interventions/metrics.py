"""Next-token metrics on last-position logits (batch, vocab) and the correlations reports share: pure functions."""
from __future__ import annotations

import torch
from torch import Tensor


def kl(clean: Tensor, other: Tensor) -> Tensor:
    """KL(P_clean || P_other) per prompt over the full vocabulary: (batch,)."""
    p_log, q_log = clean.log_softmax(-1), other.log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def logit_diff(logits: Tensor, target: Tensor, distractor: Tensor) -> Tensor:
    """logit(target) - logit(distractor) per prompt: (batch,)."""
    return logits.gather(-1, target[:, None])[:, 0] - logits.gather(-1, distractor[:, None])[:, 0]


def target_logprob(logits: Tensor, target: Tensor) -> Tensor:
    return logits.log_softmax(-1).gather(-1, target[:, None])[:, 0]


def target_prob(logits: Tensor, target: Tensor) -> Tensor:
    return target_logprob(logits, target).exp()


def top1_correct(logits: Tensor, target: Tensor) -> Tensor:
    """1.0 where the argmax over the vocabulary is the target: (batch,)."""
    return (logits.argmax(-1) == target).float()


def mean(x: Tensor) -> float:
    return float(x.double().mean())


@torch.no_grad()
def steering_metrics(clean: Tensor, steered: Tensor, target: Tensor, distractor: Tensor) -> dict[str, float]:
    """DESIGN §6 steering metrics on the eval items (selectivity is added by the kind)."""
    return {
        "ld_delta": mean(logit_diff(steered, target, distractor) - logit_diff(clean, target, distractor)),
        "target_prob_clean": mean(target_prob(clean, target)),
        "target_prob_steered": mean(target_prob(steered, target)),
        "kl": mean(kl(clean, steered)),
        "accuracy_clean": mean(top1_correct(clean, target)),
        "accuracy_steered": mean(top1_correct(steered, target)),
    }


def top1_agreement(clean: Tensor, other: Tensor) -> Tensor:
    """1.0 where both argmaxes agree: (batch,)."""
    return (clean.argmax(-1) == other.argmax(-1)).float()


def top5_overlap(clean: Tensor, other: Tensor) -> Tensor:
    """|top5(clean) ∩ top5(other)| / 5 per prompt: (batch,)."""
    a, b = clean.topk(5, dim=-1).indices, other.topk(5, dim=-1).indices
    return (a[:, :, None] == b[:, None, :]).any(-1).float().mean(-1)


@torch.no_grad()
def agreement_metrics(clean: Tensor, other: Tensor, target: Tensor) -> dict[str, float]:
    """How far `other` logits moved from the clean model's: the skip / early-exit / ablation core."""
    return {
        "kl": mean(kl(clean, other)),
        "top1_agreement": mean(top1_agreement(clean, other)),
        "top5_overlap": mean(top5_overlap(clean, other)),
        "accuracy_clean": mean(top1_correct(clean, target)),
        "accuracy_intervened": mean(top1_correct(other, target)),
    }


def selectivity(own_drop: float, collateral_drop: float) -> float:
    """Target log-prob drop on this family / mean drop on the other families' items (nan if no collateral)."""
    return own_drop / collateral_drop if collateral_drop != 0 else float("nan")


def pearson(x, y) -> float:
    """Pearson correlation of two equal-length sequences; nan when either is constant (or shorter than 2)."""
    a, b = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if len(a) > 1 and denom > 0 else float("nan")


def average_ranks(x) -> Tensor:
    """1-based ranks; tied values share the mean of their ranks."""
    values = torch.as_tensor(x, dtype=torch.float64)
    ranks = torch.empty_like(values)
    ranks[values.argsort()] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    for value in values.unique():
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson of the average ranks; nan when either side is constant."""
    return pearson(average_ranks(x), average_ranks(y))
