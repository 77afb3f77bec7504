"""Adapter surgery on weights: per-layer norm tables, rank truncation (SVD of B A), compatibility, correlations.

Pure functions of an Adapter's weights (and, for compatibility, a model's module shapes);
the runs that measure their effect live in `adapters/kind.py`.
"""
from __future__ import annotations

import io
import math

import pandas as pd
import torch
from torch import Tensor, nn

from adapters.lora import Adapter
from interventions.models import Model


def layer_of(path: str, layers_path: str) -> int:
    """'model.layers.7.self_attn.q_proj' -> 7 (with layers_path 'model.layers')."""
    return int(path[len(layers_path) + 1:].split(".", 1)[0])


def norm_table(norms: dict[str, float], layers_path: str) -> pd.DataFrame:
    """Rows (layer, module, norm) from module path -> ||B A||_F x scaling."""
    rows = [{"layer": layer_of(p, layers_path), "module": p.rsplit(".", 1)[-1], "norm": n} for p, n in norms.items()]
    return pd.DataFrame(rows).sort_values(["layer", "module"]).reset_index(drop=True)


def per_layer(table: pd.DataFrame, n_layers: int) -> list[float]:
    """Frobenius norm of each layer's modules together (sqrt of the sum of squares); 0 for an untouched layer."""
    squares = (table.assign(sq=table["norm"] ** 2).groupby("layer")["sq"].sum())
    return [math.sqrt(squares.get(layer, 0.0)) for layer in range(n_layers)]


def parquet(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def low_rank(a: Tensor, b: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """A', B' of the adapter's shapes with B' A' the best rank-`keep` approximation of B A (Eckart-Young).

    B A = Qb (Rb Ra^T) Qa^T with thin QRs of B and A^T, so the SVD is of a rank x rank matrix.
    Columns past `keep` are zero: the peft config (rank, alpha, scaling) stays as it was.
    """
    qb, rb = torch.linalg.qr(b.double())  # (out, r), (r, r)
    qa, ra = torch.linalg.qr(a.double().T)  # (in, r), (r, r)
    u, s, vh = torch.linalg.svd(rb @ ra.T)  # (r, r) each
    b_new, a_new = torch.zeros_like(b.double()), torch.zeros_like(a.double())
    b_new[:, :keep] = (qb @ u[:, :keep]) * s[:keep]  # (out, keep)
    a_new[:keep] = vh[:keep] @ qa.T  # (keep, in)
    return a_new.to(a.dtype), b_new.to(b.dtype)


def truncated(adapter: Adapter, keep: int) -> Adapter:
    """The adapter with every module's B A cut to its best rank-`keep` approximation."""
    pairs = {path: low_rank(a, b, keep) for path, (a, b) in adapter.pairs().items()}
    return adapter.with_pairs(pairs, f"{adapter.key}-keep{keep}")


def compat_problem(adapter: Adapter, source_type: str, target: Model) -> str | None:
    """Why the adapter cannot go on `target` (architecture, missing module, shape), or None if it fits."""
    if target.config.model_type != source_type:
        return f"architecture: the adapter is for {source_type}, {target.name} is {target.config.model_type}"
    for path, (a, b) in adapter.pairs().items():
        try:
            module = target.module.get_submodule(path)
        except AttributeError:
            return f"module {path} is not in {target.name} ({target.n_layers} layers)"
        if not isinstance(module, nn.Linear):
            return f"module {path} of {target.name} is a {type(module).__name__}, not Linear"
        want, have = (a.shape[1], b.shape[0]), (module.in_features, module.out_features)
        if want != have:
            return f"shape: {path} is {have[0]}->{have[1]} in {target.name}, the adapter needs {want[0]}->{want[1]}"
    return None
