"""Reading a sweep back from MLflow: its FINISHED trial runs as one tidy table, plus step-indexed curves.

How this connects: `tracking.py` writes the record (one child run per grid point, params =
axis values as text, schema in `store.py`); this module is its reader for `report` and `compare`, and only reads,
except `log_report`, which adds the report files to the sweep's newest parent run. Nothing
is recomputed: every number a report shows comes from these runs.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path

import pandas as pd
from mlflow.entities import Experiment, Run
from mlflow.tracking import MlflowClient

from interventions.kinds import KINDS
from interventions.registry import AtlasError
from orchestrator.store import ROLE_CHILD, ROLE_ESTIMATE, ROLE_PARENT, TAG, RetryOnLock, model_facts, search_all


@dataclass
class SweepRecord:
    """One sweep as the report sees it."""

    name: str
    kind: str
    model: str
    n_layers: int
    frame: pd.DataFrame  # one row per FINISHED grid point: run_id, axis columns (typed), metric columns
    curves: pd.DataFrame  # long: run_id, key, step, value (step-indexed metrics such as norm_layer)
    axes: list[str] = field(default_factory=list)  # axis columns of `frame` (params but model and kind)
    parent_id: str | None = None  # the newest invocation's parent run
    notes: list[str] = field(default_factory=list)  # what the reader had to decide (shown in the report)
    _: KW_ONLY  # what follows is named at every construction
    uri: str | None = None  # the store it was read from (None: a record built in memory)
    experiment_id: str | None = None
    estimates: pd.DataFrame = field(default_factory=pd.DataFrame)  # a screen's estimate runs, tidy like `frame`
    layer_counts: dict[str, int] = field(default_factory=dict)  # model -> n_layers (read fills it for every model)

    @property
    def models(self) -> list[str]:
        """The models whose runs the record holds, by layer count, then name (one: [self.model])."""
        found = self.frame["model"].dropna().astype(str).unique() if "model" in self.frame else ()
        if len(found) < 2:
            return [self.model]
        return sorted(found, key=lambda m: (self.layers_of(m), m))

    def layers_of(self, model: str) -> int:
        """One model's layer count: `layer_counts`, else the record's own for its model, else its config."""
        if model in self.layer_counts:
            return self.layer_counts[model]
        if model == self.model:
            return self.n_layers
        self.layer_counts[model] = n_layers_of(model, self.kind, self._rows_of(self.frame, model), self.notes)
        return self.layer_counts[model]

    def by_model(self) -> list[SweepRecord]:
        """One record per model (its runs, curves and estimates; its model and n_layers), in `models` order; a record
        of one model is [self]."""
        models = self.models
        if len(models) < 2:
            return [self]
        return [replace(self.rows_where("model", model), model=model, n_layers=self.layers_of(model),
                        layer_counts={model: self.layers_of(model)}) for model in models]

    def rows_where(self, column: str, value: str) -> SweepRecord:
        """The record of the runs (and their curves and estimates) whose `column` reads `value`; no notes."""
        frame = self._rows_of(self.frame, value, column)
        curves = self.curves
        if "run_id" in curves:
            curves = curves[curves["run_id"].isin(frame["run_id"])]
        return replace(self, frame=frame, curves=curves.reset_index(drop=True), axes=list(self.axes), notes=[],
                       estimates=self._rows_of(self.estimates, value, column))

    @staticmethod
    def _rows_of(frame: pd.DataFrame, value: str, column: str = "model") -> pd.DataFrame:
        if column not in frame:
            return frame
        return frame[frame[column].astype(str) == value].reset_index(drop=True)

    def sweep_file(self, name: str, folder: Path) -> Path | None:
        """A sweep-level file (items.parquet, ...) from the newest parent run that has it, downloaded into folder."""
        if self.uri is None or self.experiment_id is None:
            return None
        from orchestrator.sweepfiles import newest_file

        return newest_file(_client(self.uri), self.experiment_id, name, folder)


def parse_column(values: pd.Series) -> pd.Series:
    """Param text back to values: a column of integers becomes int, of numbers float, anything else stays text.

    JSON lists (skip sets) stay as their text, as the sweep's own table keeps them; a run
    without the param (an axis only some points use) holds None, or NA in an int column.
    """
    present = values.dropna()
    for cast, dtype in ((int, "Int64"), (float, "float64")):
        try:
            present.map(cast)
        except (TypeError, ValueError):
            continue
        out = values.map(lambda v, cast=cast: None if v is None or (isinstance(v, float) and math.isnan(v))
                         else cast(v))
        out = out.astype(dtype)
        return out.astype("int64") if dtype == "Int64" and not out.isna().any() else out
    return values.astype(object)


def is_curve(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def tidy(runs: list[dict], curve_keys: tuple[str, ...] = ()) -> tuple[pd.DataFrame, list[str]]:
    """Runs as {run_id, start_time, params, metrics} -> one row per grid point, and notes.

    A grid point logged twice (a spec whose items changed and ran again under the same axis
    values) keeps its newest run; the count of superseded runs goes into the notes. Metrics
    matching a pattern of `curve_keys` (fnmatch) are step-indexed: their latest value means
    nothing, so they are dropped here.
    """
    notes: list[str] = []
    if not runs:
        return pd.DataFrame(columns=["run_id"]), notes
    params = pd.DataFrame([r["params"] for r in runs])
    axes = list(params.columns)
    params = params.apply(parse_column)
    metrics = pd.DataFrame([{k: v for k, v in r["metrics"].items() if not is_curve(k, curve_keys)} for r in runs])
    frame = pd.concat([pd.DataFrame({"run_id": [r["run_id"] for r in runs],
                                     "start_time": [r["start_time"] for r in runs]}), params, metrics], axis=1)
    frame = frame.sort_values("start_time", kind="stable")
    key = frame[axes].astype(str)
    duplicated = key.duplicated(keep="last")
    if duplicated.any():
        notes.append(f"{int(duplicated.sum())} runs of grid points that ran again later were left out (newest kept)")
    frame = frame[~duplicated].drop(columns="start_time").reset_index(drop=True)
    return frame, notes


def as_rows(found: list[Run]) -> list[dict]:
    """MLflow runs as the dicts `tidy` reads: run_id, start_time, params, metrics."""
    return [{"run_id": r.info.run_id, "start_time": r.info.start_time, "params": dict(r.data.params),
             "metrics": dict(r.data.metrics)} for r in found]


def _client(uri: str) -> MlflowClient:
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise AtlasError(f"--tracking-uri: the store {uri} does not exist (no sweep has been run into it)")
    return RetryOnLock(MlflowClient(tracking_uri=uri))


def n_layers_of(model: str, kind: str, frame: pd.DataFrame, notes: list[str], facts: dict | None = None) -> int:
    """The model's layer count as the parent run recorded it (store.MODELS_TAG); for a sweep recorded before that,
    the largest layer its runs name + 1 (said in the notes)."""
    if facts and model in facts:
        return int(facts[model]["n_layers"])
    k = KINDS.get(kind) if kind in KINDS else None
    seen = [int(frame[c].max()) for c in (k.layer_axes if k else ()) if c in frame and frame[c].notna().any()]
    for column in (k.set_axes if k else ()):  # layer sets, as their JSON text
        seen += [max(json.loads(s), default=-1) for s in frame.get(column, pd.Series(dtype=object)).dropna()]
    notes.append(f"n_layers of {model} taken as the largest layer in the sweep + 1 (its parent run predates the "
                 "recorded model facts)")
    return max(seen, default=0) + 1


def finished_trials(uri: str, name: str, argument: str = "SWEEP_NAME") -> tuple[MlflowClient, Experiment, list[Run]]:
    """The store's client, sweep `name`'s experiment and its FINISHED trial runs; AtlasError naming `argument` if
    there is no such store, sweep or finished run."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise AtlasError(f"{argument}: no sweep named {name!r} in {uri} (sweeps there: {', '.join(known) or 'none'})")
    found = list(search_all(client, experiment.experiment_id,
                            f"attributes.status = 'FINISHED' and tags.`{TAG}role` = '{ROLE_CHILD}'"))
    if not found:
        raise AtlasError(f"{argument}: sweep {name!r} has no FINISHED trial runs in {uri}")
    return client, experiment, found


def read(uri: str, name: str, argument: str = "SWEEP_NAME") -> SweepRecord:
    """Every FINISHED trial run of sweep `name` (never the parent, never FAILED or KILLED runs).

    The kind's step-indexed metrics (`Kind.curves`) are read as curves. Bad input (no such store,
    sweep, or finished run) is an AtlasError that names `argument`.
    """
    client, experiment, found = finished_trials(uri, name, argument)
    kinds = sorted({r.data.params.get("kind", "?") for r in found})
    if len(kinds) != 1:
        raise AtlasError(f"{argument}: sweep {name!r} mixes experiment kinds {kinds}; one report needs one kind")
    keys = KINDS.get(kinds[0]).curves if kinds[0] in KINDS else ()
    runs = as_rows(found)
    frame, notes = tidy(runs, keys)
    model = str(frame["model"].iloc[0])
    parents = list(search_all(client, experiment.experiment_id, f"tags.`{TAG}role` = '{ROLE_PARENT}'",
                              order_by=["attributes.start_time DESC"]))
    facts = {m: f for parent in reversed(parents) for m, f in model_facts(parent).items()}  # the newest's last
    counts = {str(m): n_layers_of(str(m), kinds[0], frame[frame["model"] == m], notes, facts)
              for m in frame["model"].unique()}

    if len(counts) > 1:
        notes.append(f"runs of {len(counts)} models (" + ", ".join(f"{m}: {n} layers" for m, n in counts.items())
                     + "); each has its own section, and depth = layer / that model's n_layers puts them on one axis")
    curves = _curves(client, found, keys, set(frame["run_id"]))
    axes = [k for k in dict.fromkeys(k for r in runs for k in r["params"]) if k not in ("model", "kind")]
    estimates = _estimates(client, experiment.experiment_id)
    if len(estimates):  # a screened sweep: which exact runs the screen picked, and why
        frame["verify"] = frame["run_id"].map({r.info.run_id: r.data.tags.get(f"{TAG}verify", "") for r in found})
    return SweepRecord(name, kinds[0], model, counts[model], frame, curves, axes,
                       parents[0].info.run_id if parents else None, notes, uri=uri,
                       experiment_id=experiment.experiment_id, estimates=estimates, layer_counts=counts)


def _estimates(client, experiment_id: str) -> pd.DataFrame:
    """A screen's FINISHED estimate runs, tidy like the exact ones (empty for an unscreened sweep)."""
    found = search_all(client, experiment_id,
                       f"attributes.status = 'FINISHED' and tags.`{TAG}role` = '{ROLE_ESTIMATE}'")
    runs = as_rows(found)
    return tidy(runs)[0] if runs else pd.DataFrame()


def _curves(client, found: list, keys: tuple[str, ...], kept: set[str]) -> pd.DataFrame:
    rows = []
    for run in found:
        if run.info.run_id not in kept:
            continue
        for key in run.data.metrics:
            if is_curve(key, keys):
                rows += [{"run_id": run.info.run_id, "key": key, "step": m.step, "value": m.value}
                         for m in client.get_metric_history(run.info.run_id, key)]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def log_report(uri: str, parent_id: str, paths: list[Path], folder: str = "report") -> None:
    """The report's files as artifacts of the sweep's newest parent run (under `report/`)."""
    client = _client(uri)
    for path in paths:
        client.log_artifact(parent_id, str(path), artifact_path=folder)
