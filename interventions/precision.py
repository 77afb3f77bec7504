"""Precisions a model can run in: the PRECISIONS registry (float dtypes and weight-only quantisation) and the
check that this device can run one.

A float precision casts weights and activations. A quantised one (int8, nf4) stores the decoder layers' linear
weights quantised and keeps everything else float32: the embedding, the norms, the tied unembedding and every
activation. Each quantised linear dequantises its weight for a float32 matmul (weight-only quantisation: what the
numbers show is the weights' rounding, never an activation's). int8: per output row, symmetric absmax to 127
(plain torch). nf4: 4-bit NormalFloat in blocks of 64 with an absmax per block (bitsandbytes' quantize_4bit /
dequantize_4bit; its own Linear4bit and Linear8bitLt are not used: on a CPU with AVX512-BF16 the first runs
inference in a bfloat16 kernel, the second quantises activations to int8 through float16).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from interventions.registry import AtlasError, Registry, first_line


@dataclass(frozen=True)
class Precision:
    """One precision: the dtype the model is loaded in, and what then quantises its linear weights (None: none)."""

    dtype: str  # the torch dtype the weights are loaded and computed in
    quantise: Callable[[Tensor], tuple[Tensor, Callable[[], Tensor]]] | None = None  # weight -> (stored, dequantise)
    refused: str | None = None  # why no device here runs it (refused at validation)


PRECISIONS: Registry[Precision] = Registry("precision")


class QuantisedLinear(nn.Module):
    """A linear map whose weight is held quantised and dequantised (float32) for each matmul; input and output
    float32, so gradients reach the input as through the float map (the weight itself gets none)."""

    def __init__(self, linear: nn.Linear, quantise: Callable) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.stored, self._dequantise = quantise(linear.weight.detach())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def weight_value(self) -> Tensor:
        """The weight as the matmul sees it: (out, in), float32."""
        return self._dequantise()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self._dequantise().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, stored={self.stored.dtype}"


def int8_rows(weight: Tensor) -> tuple[Tensor, Callable[[], Tensor]]:
    """Per output row: q = round(w * 127 / max|w_row|) in int8, w ~ q * max|w_row| / 127."""
    scale = weight.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    q = torch.round(weight.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, lambda: q.float() * scale


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


def nf4_blocks(weight: Tensor) -> tuple[Tensor, Callable[[], Tensor]]:
    """bitsandbytes' NF4: blocks of 64 weights, each scaled by its absmax onto the 16 NormalFloat levels, packed two
    a byte."""
    functional = _bnb().functional
    packed, state = functional.quantize_4bit(weight.float().contiguous(), blocksize=64, quant_type="nf4")
    return packed, lambda: functional.dequantize_4bit(packed, state).float()


PRECISIONS.register("float32")(Precision("float32"))
PRECISIONS.register("bfloat16")(Precision("bfloat16"))
PRECISIONS.register("float16")(Precision("float16"))
PRECISIONS.register("int8")(Precision("float32", int8_rows))
PRECISIONS.register("nf4")(Precision("float32", nf4_blocks))
PRECISIONS.register("int4")(Precision("float32", refused=(
    "no int4 kernel runs the atlas here: torchao's CPU int4 (tinygemm) has no backward (attribution, adapters "
    "need one) and took 45x float32's forward time; use nf4 (bitsandbytes 4-bit NormalFloat)")))


def quantise(module: nn.Module, precision: str, device: str | torch.device = "cpu") -> nn.Module:
    """`module` on `device` with every linear map inside its decoder layers replaced by a QuantisedLinear of the
    precision (none for a float one); the unembedding stays. In place."""
    entry = PRECISIONS.get(precision)
    if entry.quantise is not None:
        for name, child in list(module.named_modules()):
            for attr, leaf in list(child.named_children()):
                path = f"{name}.{attr}" if name else attr
                if isinstance(leaf, nn.Linear) and ".layers." in f".{path}":
                    setattr(child, attr, QuantisedLinear(leaf.to(device), entry.quantise))
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
