"""Shared fixtures: seeded tiny models (both architectures), the embedded model, small splits, a local Ray."""
from __future__ import annotations

from pathlib import Path

import pytest

from interventions import models
from interventions.context import FamilyRun, TrialContext
from interventions.families import make_split
from interventions.kinds import KINDS

# Every kind's module (peft and transformers with them) imported now, before any test captures stderr: a logger
# whose handler is made during a capsys test would keep writing to that test's closed stream.
KINDS.names()

REPO = Path(__file__).resolve().parents[1]

# A steering spec on the tiny Llama that validates in a second and runs in a few: `.format(name=...)`.
TINY_SPEC = """\
name: {name}
model: tiny-llama
kind: steering
n_train: 4
n_eval: 2
axes:
  seed: [0]
  layer: [0, 2]
  strength: [0.5]
  vector_type: [mean_diff]
  family: [antonyms]
resources: {{cpu: 2, gpu: 0}}
"""


@pytest.fixture(scope="session")
def tiny_llama():
    return models.load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2():
    return models.load("tiny-qwen2")


@pytest.fixture(scope="session")
def smollm2():
    return models.load("smollm2-135m")


@pytest.fixture(scope="session", params=["tiny-llama", "tiny-qwen2"])
def tiny_model(request):
    return models.load(request.param)


def split(model, family="antonyms", seed=0, n_train=8, n_eval=6):
    return make_split(family, seed, model.tokenizer, n_train, n_eval, REPO)


def context(model, family="antonyms", seed=0, others=(), n_train=8, n_eval=6) -> TrialContext:
    run = FamilyRun(model, split(model, family, seed, n_train, n_eval))
    other_runs = [FamilyRun(model, split(model, f, seed, n_train, n_eval)) for f in others]
    return TrialContext(model, seed, run, other_runs)


def bad_input(tmp_path, monkeypatch, capsys, spec_text: str, files: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> str:
    """Run `sweep spec.yaml` in-process on a bad spec; assert exit 2, one stderr line, no store; return the line."""
    import sys

    from orchestrator.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "spec.yaml").write_text(spec_text)
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys, "argv", ["orchestrator", "sweep", "spec.yaml", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "mlruns").exists()
    return err
