"""Steering vectors saved by a sweep: `load` one back (unit vector and r_L) from the sweep's vectors.safetensors.

Every steering trial's unit vector is saved once per (family, seed, layer, vector type), with
the layer's r_L, in `vectors.safetensors` on the sweep's newest parent run (the model and each
(family, seed)'s item digest are the file's metadata). Plain safetensors reads it too:

    from safetensors.torch import load_file
    tensors = load_file("mlruns/reports/<sweep>/vectors.safetensors")
    unit = tensors["antonyms/seed=0/layer=14/mean_diff"]     # (d_model,), norm 1
    r_l = tensors["antonyms/seed=0/layer=14/r_L"][0]         # mean |resid_post[14]| at the last position

The vector a trial added at strength s is `s * r_l * unit` at resid_post[layer], every position.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

from interventions.registry import AtlasError
from interventions.steering import vector_name
from orchestrator.store import RetryOnLock, resolve_uri
from orchestrator.sweepfiles import VECTORS, newest_file


@dataclass(frozen=True)
class Saved:
    unit: Tensor  # (d_model,), norm 1
    r_l: float  # the layer's r_L

    def at(self, strength: float) -> Tensor:
        """The vector a trial of this strength added: strength * r_L * unit."""
        return (strength * self.r_l) * self.unit


def read(path: str | Path, family: str, seed: int, layer: int, vector_type: str) -> Saved:
    """One vector from a vectors.safetensors file."""
    tensors = load_file(str(path))
    name = vector_name(family, seed, layer, vector_type)
    if name not in tensors:
        known = sorted({k.rsplit("/", 1)[0] for k in tensors})
        more = " ..." if len(known) > 8 else ""
        raise AtlasError(f"{path}: no vector {name!r} (saved for: {', '.join(known[:8])}{more})")
    return Saved(tensors[name], float(tensors[vector_name(family, seed, layer, "r_L")][0]))


def download(sweep: str, folder: str | Path, tracking_uri: str | None = None) -> Path:
    """The sweep's vectors.safetensors from its newest parent run that has one, downloaded into `folder`."""
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(tracking_uri)
    client = RetryOnLock(MlflowClient(tracking_uri=uri))
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        raise AtlasError(f"no sweep named {sweep!r} in {uri}")
    found = newest_file(client, experiment.experiment_id, VECTORS, Path(folder))
    if found is None:
        raise AtlasError(f"sweep {sweep!r} in {uri} has no {VECTORS} (not a steering sweep, or it never finished)")
    return found


def load(sweep: str, *, family: str, seed: int, layer: int, vector_type: str,
         tracking_uri: str | None = None) -> Saved:
    """The unit vector and r_L a steering sweep used for (family, seed, layer, vector_type), from the MLflow store."""
    with tempfile.TemporaryDirectory() as tmp:
        return read(download(sweep, tmp, tracking_uri), family, seed, layer, vector_type)
