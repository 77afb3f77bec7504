"""Studies: a named list of ordinary sweeps sharing models, families and seeds, validated together, run in order.

A study file gives `name`, `models`, `families`, `seeds` and `sweeps` (each an ordinary spec body with its own
`name`). A member inherits the study's models (as `axes.model`, or `model` for one), families (`axes.family`) and
seeds (`axes.seed`) unless its body gives them; it runs as the sweep `<study>.<member>` (its own MLflow experiment),
every run tagged `orchestrator.study=<study>`. Every member is validated before anything runs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from interventions.registry import AtlasError
from orchestrator.spec import SpecError, Sweep, read_yaml
from orchestrator.store import TAG

STUDY_TAG = f"{TAG}study"


class StudySpec(BaseModel):
    """A study file's keys; each of `sweeps` is a spec body validated as a SweepSpec once it inherits."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, pattern=r"^[\w-]+$")]  # prefix of every member's experiment
    models: list[str] = Field(min_length=1)
    families: list = Field(min_length=1)  # family names or JSONL files, as in `axes.family`
    seeds: list[int] = Field(min_length=1)
    sweeps: list[dict] = Field(min_length=1)


@dataclass
class Study:
    """A validated study: every member loaded as a Sweep (named `<study>.<member>`), in the file's order."""

    path: Path
    spec: StudySpec
    members: list[tuple[str, Sweep]]  # (member name, its sweep)
    _folders: list = field(default_factory=list, repr=False)  # temporary spec files the members' paths point into

    def close(self) -> None:
        for folder in self._folders:
            folder.cleanup()
        self._folders.clear()


def member_body(spec: StudySpec, body: dict) -> dict:
    """A member's spec body with the study's models, families and seeds filled in where it gives none."""
    out = copy.deepcopy(body)
    axes = out.setdefault("axes", {})
    if not isinstance(axes, dict):
        return out  # SweepSpec refuses it, naming the field
    out["name"] = f"{spec.name}.{body['name']}"
    if "model" not in out and "model" not in axes:
        if len(spec.models) == 1:
            out["model"] = spec.models[0]
        else:
            axes["model"] = list(spec.models)
    axes.setdefault("family", list(spec.families))
    axes.setdefault("seed", list(spec.seeds))
    return out


def load_study(path: str | Path) -> Study:
    """Validate the study file and every member (SpecError naming `sweeps[i].<field>`) before anything runs."""
    from orchestrator.api import load_spec

    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = StudySpec(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "study"
        raise SpecError(f"{path.name}: {where}: {err['msg'].removeprefix('Value error, ')}") from None
    names = []
    for i, body in enumerate(spec.sweeps):
        name = body.get("name")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise SpecError(f"{path.name}: sweeps[{i}].name: a member needs a name of letters, digits, - and _")
        if name in names:
            first = names.index(name)
            raise SpecError(f"{path.name}: sweeps[{i}].name: {name!r} is already the name of sweeps[{first}]")
        names.append(name)
    study = Study(path, spec, [])
    try:
        for i, body in enumerate(spec.sweeps):
            full = member_body(spec, body)
            try:
                loaded, folder = load_spec(full, base_dir=path.parent)
            except SpecError as exc:
                reason = str(exc).split(": ", 1)[-1]  # drop the temporary file's name
                raise SpecError(f"{path.name}: sweeps[{i}].{reason}") from None
            study._folders.append(folder)
            study.members.append((body["name"], loaded))
    except BaseException:
        study.close()
        raise
    return study


def is_done(sweep: Sweep, uri: str) -> bool:
    """Whether every grid point of `sweep` already has a FINISHED run in the store."""
    from orchestrator.grid import expand
    from orchestrator.tracking import Tracker

    finished = Tracker(uri, sweep).finished()
    return all(p.trial_id in finished for p in expand(sweep))


def dry_run(study: Study, console) -> float:
    """Print each member's grid size and estimate, then the sum; returns the summed wall seconds."""
    from orchestrator.cost import dry_run_estimate
    from orchestrator.grid import expand

    total = 0.0
    for _, sweep in study.members:
        points = expand(sweep)
        lines, wall = dry_run_estimate(sweep, points)
        total += wall
        console.print(f"{sweep.spec.name}: {len(points)} grid points, kind {sweep.spec.kind}, estimate ~ {wall:.0f} s")
        for line in lines:
            console.print("  " + line)
    console.print(f"study {study.spec.name}: {len(study.members)} sweeps, estimate ~ {total:.0f} s in all "
                  "(run one after another)")
    return total


@dataclass
class StudyOutcome:
    ran: list[str] = field(default_factory=list)  # members run now
    skipped: list[str] = field(default_factory=list)  # members whose sweep had finished before
    failed: dict[str, list[str]] = field(default_factory=dict)  # member -> trial_ids that failed every retry
    interrupted: bool = False


def run_study(study: Study, *, tracking_uri: str | None = None, address: str | None = None, console=None,
              resume: bool = False, yes: bool = False) -> StudyOutcome:
    """Run the members in order through `api.run` (the sweep path); a member whose grid has finished is skipped."""
    from rich.console import Console

    from orchestrator.api import run
    from orchestrator.store import checked_store

    console = console or Console()
    uri = checked_store(tracking_uri)
    outcome = StudyOutcome()
    for member, sweep in study.members:
        if is_done(sweep, uri):
            console.print(f"{sweep.spec.name}: done, skipped")
            outcome.skipped.append(member)
            continue
        console.print(f"{sweep.spec.name}: running ({sweep.spec.kind})")
        for line in sweep.warnings:
            console.print(line)
        done = run(sweep, tracking_uri=uri, address=address, resume=resume, console=console, yes=yes,
                   tags={STUDY_TAG: study.spec.name})
        outcome.ran.append(member)
        if done.failed:
            outcome.failed[member] = list(done.failed)
        if done.interrupted:
            outcome.interrupted = True
            break
    return outcome


def study_members(uri: str, name: str) -> list[tuple[str, str]]:
    """(member name, experiment name) of every experiment in the store whose runs carry `orchestrator.study=name`,
    in the order their first run was created; AtlasError when there is none."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store import RetryOnLock, search_all

    client = RetryOnLock(MlflowClient(tracking_uri=uri))
    found = []
    for experiment in client.search_experiments():
        if not experiment.name.startswith(f"{name}."):
            continue
        runs = list(search_all(client, experiment.experiment_id, f"tags.`{STUDY_TAG}` = '{name}'"))
        if runs:
            found.append((min(r.info.start_time for r in runs), experiment.name.removeprefix(f"{name}."),
                          experiment.name))
    if not found:
        raise AtlasError(f"STUDY: no sweep in {uri} is tagged {STUDY_TAG}={name!r} (run `study` on its file first)")
    return [(member, experiment) for _, member, experiment in sorted(found)]
