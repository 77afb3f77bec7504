"""Small pure pieces against hand computations: metrics, aggregation, registries, layering."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from interventions.metrics import kl, logit_diff, selectivity, target_prob, top1_correct
from interventions.registry import AtlasError, Registry
from orchestrator.aggregate import aggregate
from tests.conftest import REPO


def test_kl_matches_a_hand_computation():
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.5, 0.25, 0.25])
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    out = kl(p.log()[None], q.log()[None] + 3.0)  # logits are shift-invariant
    assert out.shape == (1,) and float(out[0]) == pytest.approx(expected, rel=1e-5)
    assert float(kl(p.log()[None], p.log()[None])[0]) == pytest.approx(0.0, abs=1e-7)


def test_logit_diff_prob_and_accuracy_read_the_right_tokens():
    logits = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 5.0]])
    target, distractor = torch.tensor([1, 0]), torch.tensor([0, 2])
    assert logit_diff(logits, target, distractor).tolist() == [2.0, -3.0]
    assert float(target_prob(logits, target)[0]) == pytest.approx(math.exp(3) / (math.exp(1) + math.exp(3) + 1))
    assert top1_correct(logits, target).tolist() == [1.0, 0.0]
    assert selectivity(2.0, 0.5) == 4.0 and math.isnan(selectivity(1.0, 0.0))


def test_aggregate_is_mean_std_n_min_max_over_seeds():
    rows = [{"layer": L, "seed": s, "m": v} for L, vals in ((0, [1.0, 2.0, 4.0]), (1, [-9.0, -8.0, -13.0]))
            for s, v in enumerate(vals)]
    rows.append({"layer": 2, "seed": 0, "m": 0.5})
    table = aggregate(rows, ["layer"], ["m", "absent"], primary="m")
    assert table["layer"].tolist() == [1, 0, 2]  # strongest |mean| first
    first = table.iloc[0]
    assert first["m_mean"] == pytest.approx(-10.0)
    assert first["m_std"] == pytest.approx(np.std([-9.0, -8.0, -13.0], ddof=1))
    assert (first["m_n"], first["m_min"], first["m_max"]) == (3, -13.0, -8.0)
    assert math.isnan(table.iloc[2]["m_std"]) and table.iloc[2]["m_n"] == 1
    assert table["absent_n"].tolist() == [0, 0, 0]


def test_registry_rejects_duplicates_and_suggests_names():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha")
    with pytest.raises(AtlasError, match=r"unknown widget 'alpah' \(known: alpha\); did you mean 'alpha'\?"):
        reg.get("alpah")


def test_interventions_never_import_ray_or_mlflow():
    code = "import sys, interventions, adapters; print(sorted({'ray', 'mlflow', 'click'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
