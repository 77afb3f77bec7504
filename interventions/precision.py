"""Precisions a model can run in: the PRECISIONS registry (float dtypes and bitsandbytes weight quantisation) and
the check that this device can run one.

A float precision casts weights and activations. A quantised one (int8, nf4) stores the decoder layers' linear
weights quantised (bitsandbytes: int8 per-row absmax, or 4-bit NormalFloat in blocks of 64) and keeps everything
else float32: the embedding, the norms, the tied unembedding and every activation (compute dtype float32).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from interventions.registry import AtlasError, Registry, first_line


@dataclass(frozen=True)
class Precision:
    """One precision: the dtype the model is loaded in, and what then quantises its linear weights (None: none)."""

    dtype: str  # the torch dtype the weights are loaded and computed in
    quantise: Callable[[nn.Linear], nn.Module] | None = None  # a decoder linear -> its quantised stand-in
    bytes_per_weight: float = 4.0  # of a quantised (or cast) linear weight, for memory estimates
    refused: str | None = None  # why no device here runs it (refused at validation)


PRECISIONS: Registry[Precision] = Registry("precision")


def _bnb():
    """bitsandbytes, imported quietly (its CPU import warns that an optional kernel package is absent)."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError:
        raise AtlasError("needs bitsandbytes (pip install 'causal-atlas[quant]')") from None
    finally:
        logger.setLevel(level)
    return bitsandbytes


def _int8(linear: nn.Linear) -> nn.Module:
    bnb = _bnb()
    new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              has_fp16_weights=False, threshold=0.0)  # threshold 0: no float16 outlier columns
    new.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return new


def _nf4(linear: nn.Linear) -> nn.Module:
    bnb = _bnb()
    new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            compute_dtype=torch.float32, quant_type="nf4")
    new.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return new


PRECISIONS.register("float32")(Precision("float32"))
PRECISIONS.register("bfloat16")(Precision("bfloat16", bytes_per_weight=2))
PRECISIONS.register("float16")(Precision("float16", bytes_per_weight=2))
PRECISIONS.register("int8")(Precision("float32", _int8, bytes_per_weight=1))
PRECISIONS.register("nf4")(Precision("float32", _nf4, bytes_per_weight=0.5))
PRECISIONS.register("int4")(Precision("float32", refused=(
    "no int4 kernel runs the atlas here: torchao's CPU int4 (tinygemm) has no backward (attribution, adapters "
    "need one) and took 45x float32's forward time; use nf4 (bitsandbytes 4-bit NormalFloat)")))


def quantise(module: nn.Module, precision: str, device: str | torch.device = "cpu") -> nn.Module:
    """`module` (float32, on the CPU) with every linear map inside its decoder layers replaced by the precision's
    quantised stand-in, moved to `device` (bitsandbytes quantises on that move); the unembedding stays. In place."""
    entry = PRECISIONS.get(precision)
    if entry.quantise is not None:
        for name, child in list(module.named_modules()):
            for attr, leaf in list(child.named_children()):
                path = f"{name}.{attr}" if name else attr
                if isinstance(leaf, nn.Linear) and ".layers." in f".{path}":
                    setattr(child, attr, entry.quantise(leaf))
    return module.to(device)


def check_precision(precision: str, device: str = "cpu") -> None:
    """An AtlasError when `device` cannot run `precision`: refused here, a float dtype the device lacks (the tiny
    probe of models.check_dtype), or a quantised linear that does not run forward and backward."""
    from interventions.models import check_dtype

    entry = PRECISIONS.get(precision)
    if entry.refused:
        raise AtlasError(f"{precision}: {entry.refused}")
    if entry.quantise is None:
        check_dtype(entry.dtype, device)
        return
    _probe(precision, device)


def _probe(precision: str, device: str) -> None:
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            probe = nn.Module()
            probe.layers = nn.ModuleList([nn.Linear(64, 64)])
            quantise(probe, precision, device)
            x = torch.randn(2, 64, device=device, requires_grad=True)
            with torch.enable_grad():
                y = probe.layers[0](x)
                torch.autograd.grad(y.sum(), x)
    except AtlasError as exc:
        raise AtlasError(f"{precision} {exc}") from None
    except Exception as exc:  # noqa: BLE001  (any library failure means: not on this device)
        raise AtlasError(f"{precision} cannot run on {torch.device(device).type} here ({first_line(exc)})") from None
