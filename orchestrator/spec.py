"""Sweep specs: the pydantic model and `load_sweep`, which validates everything before Ray or MLflow start.

Every defect is a SpecError reading `<file>: <field path>: <reason>`.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Iterator, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from interventions.attribution import ESTIMATES
from interventions.families import Split, family_name, make_split
from interventions.families.pairs import warnings as pair_warnings
from interventions.kinds import KINDS, Kind, kind_points, registered
from interventions.layers import is_symbolic, resolve_axis
from interventions.models import EMBEDDED, ModelInfo, check_dtype, describe
from interventions.registry import AtlasError


class SpecError(AtlasError):
    """'<file>: <field>: <reason>': the CLI prints it and exits 2."""


class ActorResources(BaseModel):
    """What one trial (one actor holding one model) asks Ray for."""

    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0)  # also the actor's torch thread count (at least 1)
    gpu: float = Field(0.0, ge=0)  # 0.25 packs four actors on one GPU
    memory_gb: float | None = Field(None, gt=0)  # Ray `memory` per actor (default: the model's footprint, cost.py)


class Resources(ActorResources):
    """The sweep's actor resources, and per-model overrides of any of them (`models: {name: {memory_gb: 8}}`)."""

    models: dict[str, ActorResources] = {}

    def of(self, model: str) -> ActorResources:
        """One model's actor resources: its overrides over the sweep's."""
        base = self.model_dump(exclude={"models"})
        return ActorResources(**{**base, **self.models.get(model, ActorResources()).model_dump(exclude_unset=True)})


class Execution(BaseModel):
    """How trials are computed, never what: results are equal within float32 noise (tests/test_packing.py)."""

    model_config = ConfigDict(extra="forbid")
    pack: int = Field(32, ge=1)  # grid points of a kind's pack axes evaluated in one batched forward (1: off)
    max_batch_rows: int = Field(1024, ge=1)  # memory cap: pack x n_eval prompts in one forward
    prefix_reuse: bool = True  # start at the cached residual of layer L (off: the layers below run again)


class Baseline(BaseModel):
    """Steering's prompting baseline: the eval items after `shots` train demonstrations (0: off). On by default."""

    model_config = ConfigDict(extra="forbid")
    shots: int = Field(4, ge=0)
    every_point: ClassVar[bool] = False  # only the baseline's own grid points depend on it (shots is their value)


class Generate(BaseModel):
    """Steering's generation metrics: a greedy continuation of `tokens` tokens per eval item. Off unless given."""

    model_config = ConfigDict(extra="forbid")
    tokens: int = Field(24, ge=1, le=512)
    every_point: ClassVar[bool] = True  # every grid point's numbers depend on it: part of every trial_id


OPTIONS = {"baseline": Baseline, "generate": Generate}  # spec sections a kind may read (Kind.options)
ON_BY_DEFAULT = ("baseline",)


class Screen(BaseModel):
    """Estimate every grid point, then run exact trials only for the top `verify_top` by |estimate| and a seeded
    sample of `verify_random` others, per (component, method) (orchestrator/screen.py)."""

    model_config = ConfigDict(extra="forbid")
    estimate: Annotated[str, registered(ESTIMATES)] = "attribution"
    verify_top: int = Field(20, ge=0)
    verify_random: int = Field(10, ge=0)
    seed: int = Field(0, ge=0)  # of the random sample


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, pattern=r"^[\w.-]+$")]  # the MLflow experiment
    model: str = EMBEDDED  # built-in name, hub id or local folder (safetensors)
    kind: Annotated[str, registered(KINDS)]
    n_train: int = Field(32, ge=2)  # train items per (family, seed): vectors, means, probes
    n_eval: int = Field(32, ge=1)  # eval items per (family, seed): every metric
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the model's weights and activations
    resources: Resources = Resources()
    max_failures: int = Field(2, ge=0)  # Ray Tune retries of a trial whose actor died
    execution: Execution = Execution()
    baseline: Baseline | None = None  # steering only (default: 4 shots)
    generate: Generate | None = None  # steering only (default: off)
    screen: Screen | None = None  # estimate the grid, verify the top and a random sample exactly
    axes: dict


@dataclass(frozen=True)
class Sweep:
    """A validated spec with everything resolved: kind, axes, model sizes, and every split's items."""

    path: Path
    spec: SweepSpec
    kind: Kind
    axes: dict[str, list]  # axis -> values, `family` values as written in the spec
    model: ModelInfo
    splits: dict[tuple[str, int], Split]  # (family name, seed) -> items
    options: dict[str, dict | None] = field(default_factory=dict)  # the kind's `options` sections (None: off)
    warnings: tuple[str, ...] = ()  # printed, never fatal: e.g. train pairs that cancel (families/pairs.py)
    parts: tuple[Sweep, ...] = ()  # a `model` axis: one one-model sweep per model (`model`, `splits`: the first's)

    @property
    def models(self) -> tuple[Sweep, ...]:
        """The one-model sweeps this sweep runs: one per model of its `model` axis, else itself."""
        return self.parts or (self,)

    def of(self, point_values: dict) -> Sweep:
        """The one-model sweep a grid point belongs to."""
        if not self.parts:
            return self
        return next(p for p in self.parts if p.spec.model == point_values["model"])

    @property
    def resources(self):
        """What one actor of this (one-model) sweep asks Ray for."""
        return self.spec.resources.of(self.spec.model)

    @property
    def id_options(self) -> dict[str, dict]:
        """The options that change every grid point's numbers (part of every trial_id when on)."""
        return {k: v for k, v in self.options.items() if v is not None and OPTIONS[k].every_point}

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def pack_size(self) -> int:
        """Grid points per Ray Tune trial: those sharing one batched forward (1 for kinds without pack axes)."""
        if not self.kind.pack_axes:
            return 1
        return max(1, min(self.spec.execution.pack, self.spec.execution.max_batch_rows // self.spec.n_eval))

    @property
    def spec_hash(self) -> str:
        items = {f"{family}:{seed}": split.digest() for (family, seed), split in self.splits.items()}
        if self.parts:  # a model axis: every model's items
            items = {f"{part.spec.model}/{family}:{seed}": split.digest() for part in self.parts
                     for (family, seed), split in part.splits.items()}
        default_dtype = {"dtype"} if self.spec.dtype == "float32" else set()  # hashes from before the setting hold
        unset = {k for k in OPTIONS if getattr(self.spec, k) is None}  # hashes of specs from before options stay
        unset_resources = {k for k in ("memory_gb", "models") if not getattr(self.spec.resources, k)}  # likewise
        excluded = {k: True for k in ("execution", "screen", *default_dtype, *unset)}  # which, how trials run
        spec = self.spec.model_dump(exclude={**excluded, "resources": unset_resources})
        text = json.dumps({"spec": spec, "items": items}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _field_error(path: Path, exc: ValidationError, prefix: tuple = (), model: type[BaseModel] = None) -> SpecError:
    err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a misspelt key first
    where = ".".join(map(str, (*prefix, *err["loc"]))) or "spec"
    reason = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        for part in err["loc"][:-1]:  # the (nested) model that owns the misspelt key
            if get_origin(model) is dict:  # `part` is a key of a mapping of models (resources.models)
                model = get_args(model)[1]
                continue
            model = getattr(model.model_fields.get(part), "annotation", None) if model else None
            if get_origin(model) is not dict:
                model = next((a for a in get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)), model)
        known = list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
        near = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        reason = f"unknown key; did you mean {near[0]!r}?" if near else "unknown key" + (
            f" (known: {', '.join(known)})" if known else "")
    return SpecError(f"{path.name}: {where}: {reason}")


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        raise SpecError(f"{path.name}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path.name}: spec: must be a mapping of keys to values, not {type(raw).__name__}")
    return raw


def _check_layers(path: Path, kind: Kind, axes: dict, info: ModelInfo) -> dict:
    """Layer indices as written must exist in the model; returns the axes with `all`, `{every: k}` and
    `{depth: [...]}` resolved against it (interventions/layers.py)."""
    for name in (*kind.layer_axes, *kind.set_axes):
        for i, value in enumerate(axes.get(name, ())):
            listed = enumerate(value) if isinstance(value, list) else [(None, value)]  # a layer set: each layer
            for j, layer in listed:
                if not is_symbolic(layer) and not 0 <= layer < info.n_layers:
                    where = f"axes.{name}.{i}" + ("" if j is None else f".{j}")
                    raise SpecError(f"{path.name}: {where}: layer {layer} is outside 0..{info.n_layers - 1} "
                                    f"({info.name} has {info.n_layers} layers)")
    resolved = {name: resolve_axis(axes[name], info.n_layers, sets_only=name in kind.set_axes)
                for name in (*kind.layer_axes, *kind.set_axes) if name in axes}
    return {**axes, **resolved}


def _options(path: Path, raw: dict, spec: SweepSpec, kind: Kind) -> dict[str, dict | None]:
    """The option sections the kind reads (defaults filled in); a section given to a kind that never reads it is
    refused."""
    for name in OPTIONS:
        if name in raw and name not in kind.options:
            readers = ", ".join(k for k in KINDS.names() if name in KINDS.get(k).options)
            raise SpecError(f"{path.name}: {name}: only the {readers} kind reads it, not {kind.name}")
    out = {}
    for name in kind.options:
        value = getattr(spec, name)
        value = OPTIONS[name]() if value is None and name in ON_BY_DEFAULT and name not in raw else value
        out[name] = value.model_dump() if value is not None else None
    shots = (out.get("baseline") or {}).get("shots", 0)
    if shots > spec.n_train:
        raise SpecError(f"{path.name}: baseline.shots: {shots} demonstrations come from the train items, but n_train "
                        f"is {spec.n_train}")
    return out


@contextmanager
def _field(path: Path, prefix: str = "", suffix: str = "") -> Iterator[None]:
    """Re-raise an AtlasError inside the block as '<file>: <prefix><reason><suffix>'."""
    try:
        yield
    except SpecError:
        raise
    except AtlasError as exc:
        raise SpecError(f"{path.name}: {prefix}{exc}{suffix}") from None


def _check_dtype(path: Path, spec: SweepSpec) -> None:
    """The dtype must run on the trials' device: this machine's CPU, or its GPU when trials ask for one (a
    cluster's GPUs, not visible here, are not checked)."""
    import torch

    device = "cuda" if spec.resources.gpu > 0 else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return
    with _field(path, "dtype: "):
        check_dtype(spec.dtype, device)


def _load_splits(path: Path, spec: SweepSpec, axes: dict, info: ModelInfo, dropped: list[str] | None = None
                 ) -> dict[tuple[str, int], Split]:
    """Every (family, seed)'s items for this model's tokenizer. With `dropped` (a sweep of several models), a family
    whose items do not tokenize for this model is left out for this model only, and why goes into `dropped`."""
    names = [family_name(v) for v in axes["family"]]
    if len(set(names)) != len(names):
        raise SpecError(f"{path.name}: axes.family: two values share the family name (file stem)")
    splits = {}
    for value in axes["family"]:
        try:
            for seed in axes["seed"]:
                with _field(path, "axes.family: ", f" (model {info.name})"):
                    split = make_split(value, seed, info.tokenizer, spec.n_train, spec.n_eval, path.parent)
                splits[(split.family, seed)] = split
        except SpecError as exc:
            if dropped is None:
                raise
            dropped.append(f"{exc} (left out for {info.name} only)")
            splits = {k: v for k, v in splits.items() if k[0] != family_name(value)}
    if not splits:
        raise SpecError(dropped[-1].removesuffix(f" (left out for {info.name} only)") + " (no family is left for it)")
    return splits


def _model_names(path: Path, raw: dict, spec: SweepSpec) -> list[str] | None:
    """The `model` axis (None: the top-level `model`, the one-model shorthand)."""
    if "model" not in spec.axes:
        return None
    names = spec.axes["model"]
    if "model" in raw:
        raise SpecError(f"{path.name}: axes.model: give the models either here or as the top-level model, not both")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise SpecError(f"{path.name}: axes.model: a list of model names (built-in names, hub ids or folders)")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise SpecError(f"{path.name}: axes.model: {twice!r} is listed twice")
    if spec.screen is not None:
        raise SpecError(f"{path.name}: screen: not with a model axis yet (screen one model per sweep)")
    return names


def _one_model(path: Path, spec: SweepSpec, kind: Kind, axes: dict, options: dict, where: str = "model",
               dropped: list[str] | None = None) -> Sweep:
    """The sweep of one model: its sizes, the layer axes resolved against it, and its items."""
    with _field(path, f"{where}: "):
        info = describe(spec.model, spec.trust_remote_code)
    axes = _check_layers(path, kind, axes, info)
    with _field(path, "", f" (model {info.name})" if dropped is not None else ""):
        kind_points(kind, axes, info, options)  # model-dependent checks of the kind's own axes
    splits = _load_splits(path, spec, axes, info, dropped)
    families = {family for family, _ in splits}
    axes["family"] = [v for v in axes["family"] if family_name(v) in families]
    if kind.check_splits is not None:
        with _field(path):
            kind.check_splits(axes, splits)
    axes["family"] = [family_name(v) for v in axes["family"]]
    notes = tuple(pair_warnings(splits, info.tokenizer)) if "vector_type" in axes else ()
    return Sweep(path, spec, kind, axes, info, splits, options=options, warnings=notes)


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a spec file in full; raises SpecError naming the field."""
    path = Path(path).resolve()
    raw = read_yaml(path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise _field_error(path, exc, model=SweepSpec) from None
    kind = KINDS.get(spec.kind)
    options = _options(path, raw, spec, kind)
    if spec.screen is not None and kind.name not in ESTIMATES.get(spec.screen.estimate).kinds:
        raise SpecError(f"{path.name}: screen: {spec.screen.estimate} estimates only kind "
                        f"{', '.join(ESTIMATES.get(spec.screen.estimate).kinds)}, not {kind.name!r}")
    try:
        # paths are relative to the spec
        own = {k: v for k, v in spec.axes.items() if k != "model"}  # the model axis is every kind's (below)
        validated = kind.axes.model_validate(own, context={"base_dir": path.parent})
        axes = {k: v for k, v in validated.model_dump().items() if v is not None}
    except ValidationError as exc:
        raise _field_error(path, exc, ("axes",), kind.axes) from None
    _check_dtype(path, spec)
    names = _model_names(path, raw, spec)
    if names is None:
        return _one_model(path, spec, kind, axes, options)
    dropped: list[str] = []
    parts = tuple(_one_model(path, spec.model_copy(update={"model": name}), kind, dict(axes), options,
                             f"axes.model.{i}", dropped) for i, name in enumerate(names))
    families = list(dict.fromkeys(f for part in parts for f in part.axes["family"]))
    first = parts[0]
    top_axes = {"model": names, **first.axes, "family": families}
    notes = tuple(dropped) + tuple(dict.fromkeys(w for part in parts for w in part.warnings))
    return Sweep(path, spec, kind, top_axes, first.model, {}, options=options, warnings=notes, parts=parts)
