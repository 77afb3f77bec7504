"""Model FLOPs from a decoder's config (matmuls, 2·m·n·k), the tally of what a trial runs, the machine's matmul rate.

Only matmuls count: norms, activations, softmax, rotary and embedding lookups are a few percent
at most and are left out, as `torch.utils.flop_counter.FlopCounterMode` leaves them out.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Iterator

import torch
from torch import Tensor, nn

from interventions.architectures import Widths, part
from interventions.hooks import before
from interventions.models import Model


def projections(w: Widths, rows: int) -> int:
    """A layer's linear maps over `rows` positions: Q and O over every head, K and V over the K/V heads, the MLP."""
    attention = 2 * rows * w.d_model * w.head_dim * (2 * w.heads + 2 * w.kv_heads)
    return attention + 2 * rows * w.d_model * w.d_ff * (3 if w.gated else 2)


def attention_core(w: Widths, batch: int, tokens: int, kv: int) -> int:
    """Scores (q·kᵀ) and weighted values of every query head: the kernels compute the masked part too (causal,
    padding, sliding windows), so all tokens × kv pairs count."""
    return 2 * 2 * batch * w.heads * tokens * kv * w.head_dim


def layer_flops(w: Widths, batch: int, tokens: int, kv: int | None = None) -> int:
    """One decoder layer over (batch, tokens) new positions attending to `kv` positions (default: the same)."""
    return projections(w, batch * tokens) + attention_core(w, batch, tokens, kv or tokens)


def layer_backward(w: Widths, batch: int, tokens: int, kv: int | None = None, weight_grads: bool = False) -> int:
    """Gradients of a layer's input (the atlas's weights are frozen), and of its weights with `weight_grads`: a
    linear map's backward is one matmul of its forward's size per gradient; attention's matmuls have two
    activation operands, so two each (input-only backward ≈ 1× forward; with weights ≈ 2×)."""
    linear = projections(w, batch * tokens)
    return (2 if weight_grads else 1) * linear + 2 * attention_core(w, batch, tokens, kv or tokens)


def unembed_flops(w: Widths, rows: int) -> int:
    """lm_head over `rows` positions (the atlas unembeds only the positions a metric reads)."""
    return 2 * rows * w.d_model * w.vocab


def forward_flops(w: Widths, n_layers: int, batch: int, tokens: int, start: int = 0,
                  unembedded: int | None = None) -> int:
    """Layers start..n_layers-1 over (batch, tokens), then `unembedded` rows (default: each row's last position)."""
    rows = batch if unembedded is None else unembedded
    return (n_layers - start) * layer_flops(w, batch, tokens) + unembed_flops(w, rows)


@dataclass
class Tally:
    """The model FLOPs a block ran, and the most rows (batch · tokens) one layer saw (the matmul-rate shape)."""

    forward: int = 0
    backward: int = 0
    rows: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward


def _past(index: int, args: tuple, kwargs: dict) -> int:
    """Positions already in the layer's K/V cache (generation), 0 without a cache."""
    cache_ = next((a for a in (*args, *kwargs.values()) if hasattr(a, "get_seq_length")), None)
    return 0 if cache_ is None else int(cache_.get_seq_length(index))


def _with_grad(hidden: Tensor, module: nn.Module) -> bool:
    """A backward will follow (attribution, adapter training): every atlas forward under grad is differentiated."""
    return torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in module.parameters()))


@contextmanager
def counting(model: Model) -> Iterator[Tally]:
    """Tally the FLOPs of every decoder layer and unembedding the model runs in the block, from their input shapes
    (cheap arithmetic, any caller: cached-stream starts, skipped layers and generation count as run). A layer run
    under grad also counts its input-gradient backward; autograd skips the part below the lowest gradient asked
    for (attribution: most of layer 0), so a backward is counted high by at most one layer."""
    w = model.arch.widths(model.module.config)
    layers = part(model.module, model.arch.layers)
    lm_head = part(model.module, model.arch.lm_head)
    tally = Tally()

    def layer(index: int, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        batch, tokens = hidden.shape[:2]
        kv = tokens + _past(index, args, kwargs)
        tally.forward += layer_flops(w, batch, tokens, kv)
        tally.rows = max(tally.rows, batch * tokens)
        if _with_grad(hidden, layers[index]):
            tally.backward += layer_backward(w, batch, tokens, kv)

    def head(_key, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["input"]
        rows = hidden.numel() // hidden.shape[-1]
        tally.forward += unembed_flops(w, rows)
        if _with_grad(hidden, lm_head):
            tally.backward += unembed_flops(w, rows)

    with before(dict(enumerate(layers)), layer), before({0: lm_head}, head):
        yield tally


def rate_rows(rows: int) -> int:
    """The matmul-rate shape's rows for a trial's largest layer input: a power of two, 64..2048 (so the rate is
    measured a few times per process at most, each well under a second)."""
    return 1 << min(11, max(6, rows.bit_length() - 1))


@cache
def matmul_rate(rows: int, d_model: int, d_ff: int, threads: int, device: str = "cpu", seconds: float = 0.25) -> float:
    """FLOP/s of a dense float32 (rows × d_model) @ (d_model × d_ff) at `threads` torch threads in this process: the
    fastest of repeats for about `seconds`. One CPU thread is timed by its CPU time (the matmul runs in the calling
    thread), so other processes on the machine do not lower it; more threads and GPUs by the wall clock, and so is a
    repeat whose calling thread spent under half its wall time on the CPU (the matmul ran in a pool's threads: its
    CPU time alone would be ~0, and the loop, counting it, never ended). At most 8x `seconds` of wall time."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    by_cpu = threads == 1 and device == "cpu"
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, k, generator=gen).to(device) for n, k in ((rows, d_model), (d_model, d_ff)))
        a @ b  # warm-up: first-call allocation and dispatch
        best, spent, repeats = float("inf"), 0.0, 0
        deadline = time.perf_counter() + 8 * seconds
        while (spent < seconds or repeats < 3 or best == float("inf")) and time.perf_counter() < deadline:
            sync()
            wall, cpu = time.perf_counter(), time.thread_time()
            a @ b
            sync()
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            took = cpu if by_cpu and cpu >= 0.5 * wall else wall
            if took > 0:
                best = min(best, took)
            spent, repeats = spent + wall, repeats + 1
        return 2 * rows * d_model * d_ff / best if best < float("inf") else float("nan")
    finally:
        torch.set_num_threads(threads_before)
