"""Sweep specs: the pydantic model and `load_sweep`, which validates everything before Ray or MLflow start.

Every defect is a SpecError reading `<file>: <field path>: <reason>`.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Iterator, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

import adapters  # noqa: F401  (the kinds above interventions: adapters adds its own to KINDS)
from interventions.attribution import ESTIMATES
from interventions.families import Split, family_name, make_split
from interventions.kinds import KINDS, Kind, Option, kind_points, registered
from interventions.layers import is_symbolic, resolve_axis
from interventions.length import lengthen_split
from interventions.models import EMBEDDED, ModelInfo, check_dtype, describe
from interventions.precision import PRECISIONS, check_precision
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
    baseline_cache_mb: int = Field(2048, ge=0)  # per actor: (family, seed) baselines kept besides the one in use


class Screen(BaseModel):
    """Estimate every grid point, then run exact trials only for the top `verify_top` by |estimate| and a seeded
    sample of `verify_random` others, per (component, method) (orchestrator/screen.py)."""

    model_config = ConfigDict(extra="forbid")
    estimate: Annotated[str, registered(ESTIMATES)] = "attribution"
    verify_top: int = Field(20, ge=0)
    verify_random: int = Field(10, ge=0)
    seed: int = Field(0, ge=0)  # of the random sample
    steps: int | None = Field(None, ge=1)  # ig: points on the path from the clean value to the replacement (8 unset)

    def params(self) -> dict:
        """The keys the estimate reads besides estimate / verify_* / seed (Estimate.params), those given."""
        return {k: getattr(self, k) for k in ESTIMATES.get(self.estimate).params if getattr(self, k) is not None}


class SweepSpec(BaseModel):
    """The spec's own keys; `spec_model()` adds each kind's option sections (Kind.options), before `screen`."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, pattern=r"^[\w.-]+$")]  # the MLflow experiment
    model: str = EMBEDDED  # built-in name, hub id or local folder (safetensors)
    kind: Annotated[str, registered(KINDS)]
    n_train: int = Field(32, ge=2)  # train items per (family, seed): vectors, means, probes
    n_eval: int = Field(32, ge=1)  # eval items per (family, seed): every metric
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the model's weights and activations (the one
    # precision of a sweep without axes.precision)
    resources: Resources = Resources()
    max_failures: int = Field(2, ge=0)  # Ray Tune retries of a trial whose actor died
    execution: Execution = Execution()
    screen: Screen | None = None  # estimate the grid, verify the top and a random sample exactly
    length_context: Literal["neutral", "family"] | None = None  # with axes.length: what the prepended context is
    # (neutral passages, the default, or other solved items of the family; interventions/length.py)
    axes: dict


def options() -> dict[str, type[Option]]:
    """Every option section a registered kind reads (Kind.options): section name -> its model."""
    out: dict[str, type[Option]] = {}
    for name in KINDS:
        for section, model in KINDS.get(name).options.items():
            if out.setdefault(section, model) is not model or section in SweepSpec.model_fields:
                raise ValueError(f"kind {name!r}: option section {section!r} is declared twice, or is a spec key")
    return out


def spec_model() -> type[BaseModel]:
    """SweepSpec with a section per option of every registered kind (None unless given), before `screen`."""
    return _spec_model(tuple(options().items()))


@lru_cache(maxsize=None)
def _spec_model(sections: tuple[tuple[str, type[Option]], ...]) -> type[BaseModel]:
    fields = {name: (f.annotation, f) for name, f in SweepSpec.model_fields.items()}
    tail = {name: fields.pop(name) for name in ("screen", "axes")}
    return create_model("SweepSpec", __config__=SweepSpec.model_config, __doc__=SweepSpec.__doc__, **fields,
                        **{name: (model | None, None) for name, model in sections}, **tail)


@dataclass(frozen=True)
class Part:
    """One model of a sweep: its sizes, the axes resolved against it, its items and what its actors ask Ray for."""

    name: str  # the model as the spec names it (built-in name, hub id or folder)
    model: ModelInfo
    axes: dict[str, list]  # axis -> values for this model (layers resolved against it, its families by name)
    splits: dict[tuple[str, int], Split]  # (family name, seed) -> items for this model's tokenizer
    resources: ActorResources


@dataclass(frozen=True)
class Sweep:
    """A validated spec with everything resolved: kind, options, and one Part per model (one for a one-model sweep)."""

    path: Path
    spec: SweepSpec
    kind: Kind
    axes: dict[str, list]  # the sweep's axes: `model` (`precision`) only when the spec gives a model (precision)
    # axis, families of every model
    parts: tuple[Part, ...]
    options: dict[str, dict | None] = field(default_factory=dict)  # the kind's `options` sections (None: off)
    warnings: tuple[str, ...] = ()  # printed, never fatal: e.g. train pairs that cancel (families/pairs.py)
    root: Path | None = None  # what relative paths resolve against, when not the spec's folder (api.py: the cwd)

    @property
    def precisions(self) -> list[str]:
        """What actors load each model in: the precision axis, else the spec's dtype."""
        return self.axes.get("precision", [self.spec.dtype])

    def part(self, name: str) -> Part:
        """The part of model `name`."""
        return next(p for p in self.parts if p.name == name)

    def updated(self, **spec_fields) -> Sweep:
        """This sweep with spec fields that say how trials run replaced (resources, execution): each part's resources
        follow."""
        spec = self.spec.model_copy(update=spec_fields)
        parts = tuple(replace(p, resources=spec.resources.of(p.name)) for p in self.parts)
        return replace(self, spec=spec, parts=parts)

    @property
    def id_options(self) -> dict[str, dict]:
        """The options that change every grid point's numbers (part of every trial_id when on)."""
        return {k: v for k, v in self.options.items() if v is not None and self.kind.options[k].every_point}

    @property
    def base_dir(self) -> Path:
        return self.root or self.path.parent

    @property
    def pack_size(self) -> int:
        """Grid points per Ray Tune trial: those sharing one batched forward (1 for kinds without pack axes)."""
        if not self.kind.pack_axes:
            return 1
        return max(1, min(self.spec.execution.pack, self.spec.execution.max_batch_rows // self.spec.n_eval))

    @property
    def spec_hash(self) -> str:
        prefix = "model" in self.axes  # a model axis: every model's items under its name (one model: as before)
        items = {f"{part.name}/" * prefix + f"{family}:{seed}": split.digest() for part in self.parts
                 for (family, seed), split in part.splits.items()}
        default_dtype = {"dtype"} if self.spec.dtype == "float32" else set()  # hashes from before the setting hold
        unset = {k for k in (*options(), "length_context") if getattr(self.spec, k, None) is None}  # specs from
        # before options (and length_context): the same hash
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
    for name in options():
        if name in raw and name not in kind.options:
            readers = ", ".join(k for k in KINDS.names() if name in KINDS.get(k).options)
            raise SpecError(f"{path.name}: {name}: only the {readers} kind reads it, not {kind.name}")
    values = {}
    for name, model in kind.options.items():
        value = getattr(spec, name)
        values[name] = model() if value is None and model.on_by_default and name not in raw else value
    for name, value in values.items():  # checks against the rest of the spec (steering: baseline.shots <= n_train)
        if value is not None:
            with _field(path, f"{name}."):
                value.check(spec)
    return {name: value.model_dump() if value is not None else None for name, value in values.items()}


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


def _load_splits(path: Path, spec: SweepSpec, axes: dict, info: ModelInfo, dropped: list[str] | None = None,
                 base: Path | None = None, make=make_split) -> dict[tuple[str, int], Split]:
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
                    split = make(value, seed, info.tokenizer, spec.n_train, spec.n_eval, base or path.parent)
                if "length" not in axes:
                    splits[(split.family, seed)] = split
                for label in axes.get("length", ()):  # each bucket's items under split_key(family, bucket)
                    context = getattr(info.config, "max_position_embeddings", None)
                    with _field(path, "", f" (family {split.family}, model {info.name})"):
                        longer, _ = lengthen_split(split, info.tokenizer, label, spec.length_context or "neutral",
                                                   context)
                    splits[(longer.family, seed)] = longer
        except SpecError as exc:
            if dropped is None:
                raise
            dropped.append(f"{exc} (left out for {info.name} only)")
            splits = {k: v for k, v in splits.items() if k[0].split("@")[0] != family_name(value)}
    if not splits:
        raise SpecError(dropped[-1].removesuffix(f" (left out for {info.name} only)") + " (no family is left for it)")
    return splits


def _precisions(path: Path, raw: dict, spec: SweepSpec, kind: Kind) -> list[str] | None:
    """The `precision` axis (None: the spec's dtype), each value one the trials' device runs (as _check_dtype)."""
    if "precision" not in spec.axes:
        return None
    values = spec.axes["precision"]
    where = f"{path.name}: axes.precision"
    if "dtype" in raw:
        raise SpecError(f"{where}: give the precisions either here or as the top-level dtype, not both")
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise SpecError(f"{where}: a list of precisions ({', '.join(PRECISIONS.names())})")
    if len(set(values)) != len(values):
        raise SpecError(f"{where}: {next(v for v in values if values.count(v) > 1)!r} is listed twice")
    if spec.screen is not None:
        raise SpecError(f"{path.name}: screen: not with a precision axis yet (screen one precision per sweep)")
    import torch

    device = "cuda" if spec.resources.gpu > 0 else "cpu"
    if device == "cpu" or torch.cuda.is_available():  # a cluster's GPUs, not visible here, are not checked
        for i, value in enumerate(values):
            with _field(path, f"axes.precision.{i}: "):
                check_precision(value, device)
    for i, value in enumerate(values):
        with _field(path, f"axes.precision.{i}: "):
            quantised = PRECISIONS.get(value).quantise is not None  # unknown names: also where no device is checked
        if kind.float_linears and quantised:
            raise SpecError(f"{where}.{i}: {value}: the {kind.name} kind puts LoRA layers (peft) on the linear maps, "
                            "which a quantised one is not; use float32, bfloat16 or float16")
    return values


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


def _part(path: Path, spec: SweepSpec, name: str, kind: Kind, axes: dict, options: dict, where: str,
          dropped: list[str] | None, base: Path | None = None) -> Part:
    """One model's part: its sizes, the layer axes resolved against it, and its items."""
    with _field(path, f"{where}: "):
        info = describe(name, spec.trust_remote_code)
    axes = _check_layers(path, kind, axes, info)
    with _field(path, "", f" (model {info.name})" if dropped is not None else ""):
        kind_points(kind, axes, info, options)  # model-dependent checks of the kind's own axes
    splits = _load_splits(path, spec, axes, info, dropped, base, kind.split or make_split)
    families = {family.split("@")[0] for family, _ in splits}  # without the length bucket (split_key)
    axes["family"] = [v for v in axes["family"] if family_name(v) in families]
    if kind.check_splits is not None:
        with _field(path):
            kind.check_splits(axes, splits)
    axes["family"] = [family_name(v) for v in axes["family"]]
    return Part(name, info, axes, splits, spec.resources.of(name))


def load_sweep(path: str | Path, base_dir: str | Path | None = None) -> Sweep:
    """Read and validate a spec file in full; raises SpecError naming the field. Relative paths in it (JSONL
    families, adapters) resolve against `base_dir`, by default the spec's own folder."""
    path = Path(path).resolve()
    base = Path(base_dir).resolve() if base_dir is not None else path.parent
    raw = read_yaml(path)
    try:
        spec = spec_model().model_validate(raw)
    except ValidationError as exc:
        raise _field_error(path, exc, model=spec_model()) from None
    kind = KINDS.get(spec.kind)
    options = _options(path, raw, spec, kind)
    if spec.screen is not None and kind.name not in ESTIMATES.get(spec.screen.estimate).kinds:
        raise SpecError(f"{path.name}: screen: {spec.screen.estimate} estimates only kind "
                        f"{', '.join(ESTIMATES.get(spec.screen.estimate).kinds)}, not {kind.name!r}")
    if spec.screen is not None:
        reads = ESTIMATES.get(spec.screen.estimate).params
        for key in ("steps",):
            if getattr(spec.screen, key) is not None and key not in reads:
                users = [n for n in ESTIMATES.names() if key in ESTIMATES.get(n).params]
                raise SpecError(f"{path.name}: screen.{key}: only with estimate: {' | '.join(users)}, "
                                f"not {spec.screen.estimate}")
    try:
        # paths are relative to the spec
        own = {k: v for k, v in spec.axes.items() if k not in ("model", "precision")}  # every kind's (below)
        validated = kind.axes.model_validate(own, context={"base_dir": base})
        axes = {k: v for k, v in validated.model_dump().items() if v is not None}
    except ValidationError as exc:
        raise _field_error(path, exc, ("axes",), kind.axes) from None
    if spec.length_context is not None and "length" not in axes:
        raise SpecError(f"{path.name}: length_context: only with a length axis (axes.length)")
    _check_dtype(path, spec)
    precisions = _precisions(path, raw, spec, kind)
    if precisions:
        axes["precision"] = precisions
    names = _model_names(path, raw, spec)
    dropped = [] if names else None  # several models: a family that does not tokenize for one leaves that one only
    parts = tuple(_part(path, spec, name, kind, dict(axes), options, f"axes.model.{i}" if names else "model", dropped,
                        base) for i, name in enumerate(names or [spec.model]))
    families = list(dict.fromkeys(f for part in parts for f in part.axes["family"]))
    top_axes = {**({"model": names} if names else {}), **({"precision": precisions} if precisions else {}),
                **parts[0].axes, "family": families}
    notes = tuple(dropped or ()) + tuple(dict.fromkeys(w for part in parts for w in (
        kind.split_warnings(part.splits, part.model.tokenizer) if kind.split_warnings else ())))
    return Sweep(path, spec, kind, top_axes, parts, options=options, warnings=notes,
                 root=base if base_dir is not None else None)
