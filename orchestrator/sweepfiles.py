"""Sweep-level files gathered from trial results: items.parquet (per-item values) and vectors.safetensors.

Trials may return per-item columns (`TrialResult.items`) and named tensors (`TrialResult.tensors`,
steering's unit vectors and r_L). The writer thread gathers them as it logs each point; at the
end of an invocation they are written once, as artifacts of its parent run, merged with the
newest earlier parent's copies, so that the newest parent always holds the whole sweep: rows of
points no longer in the grid and tensors of items that changed are dropped. While the sweep runs
the writer also checkpoints them onto the parent run (`checkpoint`), so that a driver that dies
(SIGKILL, a lost node) loses at most the last moments' per-item values.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load, save_file

from orchestrator.grid import Point, table_values
from orchestrator.spec import Part, Sweep
from orchestrator.store import ROLE_PARENT, TAG, search_all

ITEMS, VECTORS = "items.parquet", "vectors.safetensors"


@dataclass
class Gathered:
    """What this invocation's trials sent besides metrics (filled by the writer thread)."""

    items: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # trial_id -> column -> per-item values
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> tensor (one per name)

    def add(self, trial_id: str, extra: dict) -> None:
        if extra.get("items"):
            self.items[trial_id] = extra["items"]
        if extra.get("tensors"):
            self.tensors.update(load(extra["tensors"]))


def newest_file(client, experiment_id: str, name: str, folder: Path, skip: str | None = None) -> Path | None:
    """Artifact `name` of the newest parent run (but `skip`) that has one, downloaded into `folder`; None if none."""
    parents = search_all(client, experiment_id, f"tags.`{TAG}role` = '{ROLE_PARENT}'",
                         order_by=["attributes.start_time DESC"])
    for run in parents:
        if run.info.run_id != skip and any(a.path == name for a in client.list_artifacts(run.info.run_id)):
            return Path(client.download_artifacts(run.info.run_id, name, str(folder)))
    return None


def _previous(tracker, parent: str, name: str, folder: Path) -> Path | None:
    """The sweep's copy so far: this parent's own if it has one (a parent continued by a rerun), else the newest
    earlier parent's."""
    return newest_file(tracker.client, tracker.experiment_id, name, folder)


def items_table(sweep: Sweep, points: list[Point], gathered: Gathered, earlier: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (grid point, eval item): trial_id, the point's axis values, item, and the kind's per-item columns."""
    by_id = dict(zip((p.trial_id for p in points), table_values(points)))
    rows = []
    for trial_id, columns in gathered.items.items():
        if trial_id not in by_id:
            continue
        values = by_id[trial_id]
        n = len(next(iter(columns.values())))
        rows += [{"trial_id": trial_id, **values, "item": i, **{c: v[i] for c, v in columns.items()}}
                 for i in range(n)]
    table = pd.DataFrame(rows)
    if earlier is not None and len(earlier):
        kept = earlier[earlier["trial_id"].isin(set(by_id) - set(gathered.items))]
        table = pd.concat([kept, table], ignore_index=True)
    return table


def _digests(part: Part) -> dict[str, str]:
    return {f"{family}/seed={seed}": split.digest() for (family, seed), split in part.splits.items()}


def vectors_file(part: Part, gathered: Gathered, earlier: Path | None, path: Path) -> int:
    """Write one model's named tensors to `path` (the model and each (family, seed)'s item digest as metadata);
    tensors of an earlier file whose model or items differ are dropped. Returns the number of tensors."""
    digests = _digests(part)
    tensors = {}
    if earlier is not None:
        from safetensors import safe_open

        with safe_open(str(earlier), "pt") as old:
            meta = old.metadata() or {}
            if meta.get("model") == part.name:
                for name in old.keys():
                    key = name.split("/layer=")[0]
                    if key in digests and meta.get(key) == digests[key]:
                        tensors[name] = old.get_tensor(name)
    tensors.update(gathered.tensors)
    if tensors:
        save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(path),
                  metadata={"model": part.name, **digests})
    return len(tensors)


def checkpoint(sweep: Sweep, tracker, points: list[Point], parent: str, gathered: Gathered) -> None:
    """The sweep files as they stand, on the parent run (the next write merges them, as the end's does)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_sweep_files(sweep, tracker, points, set(), parent, gathered, Path(tmp), lambda line: None)


def write_sweep_files(sweep: Sweep, tracker, points: list[Point], finished: set[str], parent: str,
                      gathered: Gathered, out_dir: Path, say) -> list[Path]:
    """items.parquet and vectors.safetensors for the whole sweep in out_dir, logged on `parent`; nothing if no
    trial of the sweep ever sent any."""
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        earlier = _previous(tracker, parent, ITEMS, Path(tmp))
        table = items_table(sweep, points, gathered, pd.read_parquet(earlier) if earlier else None)
        if len(table):
            written.append(out_dir / ITEMS)
            table.to_parquet(written[-1], index=False)
            missing = len(finished - set(table["trial_id"]))
            if missing:
                say(f"{ITEMS}: {missing} finished grid points have no per-item values (they finished in an "
                    "invocation that stopped before writing its files)")
        if len(sweep.parts) > 1 and gathered.tensors:  # tensor names say family, seed and layer, not the model
            say(f"{VECTORS}: not written for a sweep of several models (run one model per sweep to keep vectors)")
        elif vectors_file(sweep.parts[0], gathered, _previous(tracker, parent, VECTORS, Path(tmp)), out_dir / VECTORS):
            written.append(out_dir / VECTORS)
    if written:
        tracker.log_outputs(parent, written)
    return written
