"""Cross-model activation patching: one model's resid_post[L] run through another model's later layers; recovery.

Pure tensor code on two models of the same shape (a base model and its fine-tuned copy,
say): `patched_logits(base, donor_resid, batch, L)` runs layers L+1.. and the unembedding
of `base` on the donor's resid_post[L].
"""
from __future__ import annotations

from torch import Tensor

from interventions.forward import Batch, run_from
from interventions.models import Model
from interventions.registry import AtlasError


def patched_logits(base: Model, donor_resid: Tensor, batch: Batch, layer: int) -> Tensor:
    """Last-position logits (batch, vocab) of `base` with resid_post[layer] replaced by donor_resid (batch, pos, d)."""
    if donor_resid.shape[-1] != base.config.hidden_size:
        raise AtlasError(f"cannot patch a d_model {donor_resid.shape[-1]} residual into {base.name} "
                         f"(d_model {base.config.hidden_size})")
    return run_from(base, donor_resid, batch, layer + 1)


def recovery(ld_patched: float, ld_base: float, ld_donor: float) -> float:
    """(LD_patched - LD_base) / (LD_donor - LD_base): 0 = the base's behaviour, 1 = the donor's; nan without a gap."""
    gap = ld_donor - ld_base
    return (ld_patched - ld_base) / gap if gap != 0 else float("nan")
