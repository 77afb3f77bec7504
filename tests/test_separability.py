"""Skill separability: each component on constructed evidence whose answer is known, the score, and the table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from interventions.separability import (
    COMPONENTS,
    SkillEvidence,
    collateral,
    components,
    insertion,
    knockout,
    score,
    sharpness,
    transfer,
)
from orchestrator.report import separability as table_of

N = 8
ONE_LAYER = np.eye(N)[3] * 2.0  # the whole effect at L3
FLAT = np.full(N, 2.0 / N)


def entropy_sharpness(profile: np.ndarray) -> float:
    """Independent computation: 1 - H / log n with scipy-free plain Python."""
    total = sum(abs(x) for x in profile)
    h = -sum((abs(x) / total) * math.log(abs(x) / total) for x in profile if x)
    return 1 - h / math.log(len(profile))


def test_one_layer_skill_scores_higher_than_a_flat_one():
    others = np.full((2, N), 0.05)
    sharp = components(SkillEvidence(own=ONE_LAYER, others=others))
    flat = components(SkillEvidence(own=FLAT, others=others))
    assert sharp["sharpness"] == pytest.approx(1.0)
    assert flat["sharpness"] == pytest.approx(0.0, abs=1e-12)
    assert score(sharp) > score(flat)


def test_sharpness_matches_the_entropy_definition():
    rng = np.random.default_rng(0)
    for _ in range(5):
        profile = rng.exponential(size=N)
        assert sharpness(SkillEvidence(own=profile)) == pytest.approx(entropy_sharpness(profile))
    assert sharpness(SkillEvidence(own=np.zeros(N))) == 0.0
    assert sharpness(SkillEvidence(own=np.array([1.0]))) is None  # one layer: nothing to be sharp against


def test_a_knockout_that_breaks_other_families_scores_lower():
    clean = components(SkillEvidence(own=ONE_LAYER, others=np.zeros((3, N))))
    messy = components(SkillEvidence(own=ONE_LAYER, others=np.tile(ONE_LAYER, (3, 1))))  # the same layer breaks all
    assert clean["collateral"] == 1.0 and messy["collateral"] == 0.0
    assert clean["knockout"] == messy["knockout"] and clean["sharpness"] == messy["sharpness"]
    assert score(messy) < score(clean)


def test_collateral_reads_the_other_families_at_the_own_peak_layer():
    others = np.zeros((2, N))
    others[:, 5] = 10.0  # others break at L5, but the family's knockout is L3
    assert collateral(SkillEvidence(own=ONE_LAYER, others=others)) == 1.0
    others[0, 3], others[1, 3] = 0.5, 1.5  # mean 1.0 at L3 against own 2.0
    assert collateral(SkillEvidence(own=ONE_LAYER, others=others)) == pytest.approx(0.5)
    assert collateral(SkillEvidence(own=ONE_LAYER)) is None


def test_knockout_insertion_transfer_values():
    assert knockout(SkillEvidence(own=ONE_LAYER)) == pytest.approx(2 / 3)
    assert knockout(SkillEvidence(own=np.zeros(N))) == 0.0
    assert insertion(SkillEvidence(boost=1.0)) == pytest.approx(0.5)
    assert insertion(SkillEvidence(boost=-3.0)) == 0.0  # worse than the random vector
    assert transfer(SkillEvidence(recovery=np.array([-0.5, 0.5, 1.5]))) == pytest.approx((0 + 0.5 + 1) / 3)
    assert transfer(SkillEvidence(recovery=np.array([np.nan]))) is None


@pytest.mark.parametrize("name,make", [
    ("sharpness", lambda t: SkillEvidence(own=np.array([1.0 + 9 * t, 1.0, 1.0, 1.0]))),
    ("knockout", lambda t: SkillEvidence(own=ONE_LAYER * (0.1 + 5 * t))),
    ("collateral", lambda t: SkillEvidence(own=ONE_LAYER, others=np.tile(ONE_LAYER * (1 - t), (2, 1)))),
    ("insertion", lambda t: SkillEvidence(boost=10 * t)),
    ("transfer", lambda t: SkillEvidence(recovery=np.full(4, t))),
])
def test_each_component_is_monotone_and_in_unit_interval(name, make):
    values = [COMPONENTS.get(name)(make(t)) for t in np.linspace(0, 1, 11)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_random_evidence_stays_in_unit_interval_and_missing_components_are_left_out():
    rng = np.random.default_rng(1)
    for _ in range(50):
        ev = SkillEvidence(own=rng.normal(size=N) * 3, others=rng.normal(size=(3, N)) * 3,
                           boost=float(rng.normal() * 5), recovery=rng.normal(size=N) * 2)
        parts = components(ev)
        assert set(parts) == set(COMPONENTS.names())
        assert all(0.0 <= v <= 1.0 for v in parts.values())
        assert min(parts.values()) <= score(parts) <= max(parts.values())
    only = components(SkillEvidence(boost=1.0))
    assert only == {"insertion": 0.5} and score(only) == 0.5
    assert math.isnan(score({}))


def _ablation_frame() -> pd.DataFrame:
    """Two seeds, three families: `sharp` peaks at L1 alone; `flat` is even; `leaky` peaks at L2 where the others
    also break."""
    rows = []
    effects = {"sharp": [0.0, 4.0, 0.0, 0.0], "flat": [1.0, 1.0, 1.0, 1.0], "leaky": [0.0, 0.0, 3.0, 0.0]}
    effects_seed1 = {f: [v * 1.1 for v in e] for f, e in effects.items()}
    for seed, table in ((0, effects), (1, effects_seed1)):
        for family, profile in table.items():
            for layer, kl in enumerate(profile):
                rows.append(dict(component="layer", method="mean", layer=layer, head=None, family=family,
                                 seed=seed, kl=kl))
                rows.append(dict(component="layer", method="zero", layer=layer, head=None, family=family,
                                 seed=seed, kl=100.0))  # another method: must not be read when mean is there
    return pd.DataFrame(rows)


def test_table_from_an_ablation_frame_ranks_the_constructed_families():
    table = table_of.separability_table(ablation=_ablation_frame(), model="m")
    assert len(table) == 6 and set(table["n_components"]) == {3}
    seed0 = table[table["seed"] == 0].set_index("family")
    assert seed0.loc["sharp", "sharpness"] == pytest.approx(1.0)
    assert seed0.loc["flat", "sharpness"] == pytest.approx(0.0, abs=1e-12)
    assert seed0.loc["sharp", "knockout"] == pytest.approx(4 / 5)  # the mean method's kl, not zero's 100
    # sharp at L1: others there: flat 1.0, leaky 0.0 -> mean 0.5 of 4.0
    assert seed0.loc["sharp", "collateral"] == pytest.approx(1 - 0.5 / 4)
    # leaky at L2: flat 1.0, sharp 0.0 -> 0.5 of 3.0; flat (peak L0, first max): sharp 0, leaky 0 -> 1
    assert seed0.loc["leaky", "collateral"] == pytest.approx(1 - 0.5 / 3)
    for _, row in seed0.iterrows():
        assert row["sss"] == pytest.approx(np.mean([row["sharpness"], row["knockout"], row["collateral"]]))
    summary = table_of.over_seeds(table)
    assert list(summary["family"])[0] == "sharp" and summary["n"].tolist() == [2, 2, 2]
    sharp = summary.set_index("family").loc["sharp"]
    both = table[table["family"] == "sharp"]["knockout"]
    assert sharp["knockout_std"] == pytest.approx(both.std(ddof=1)) and sharp["knockout_std"] > 0
    lines = table_of.notes(summary)
    assert len(lines) == 3 and lines[0].startswith("SSS sharp (m)") and "sharpness" in lines[0]
    assert table_of.render(summary).row_count == 3


def test_table_joins_steering_and_cross_model_evidence():
    steering = pd.DataFrame([
        dict(family="sharp", seed=0, layer=1, strength=4.0, vector_type="mean_diff", ld_delta=3.0),
        dict(family="sharp", seed=0, layer=1, strength=4.0, vector_type="random", ld_delta=1.0),
        dict(family="sharp", seed=0, layer=2, strength=4.0, vector_type="mean_diff", ld_delta=1.5),
        dict(family="sharp", seed=0, layer=2, strength=4.0, vector_type="random", ld_delta=1.0),
        dict(family="sharp", seed=0, layer=1, strength=-4.0, vector_type="mean_diff", ld_delta=-9.0),
    ])
    cross = pd.DataFrame([dict(family="sharp", seed=0, layer=layer, recovery=r)
                          for layer, r in enumerate([0.2, 0.4, 0.9, 1.0])])
    table = table_of.separability_table(ablation=_ablation_frame(), steering=steering, cross_model=cross,
                                        n_layers={"m": 4}, model="m")
    row = table[(table["family"] == "sharp") & (table["seed"] == 0)].iloc[0]
    assert row["n_components"] == 5
    assert row["insertion"] == pytest.approx(2.0 / 3.0)  # best beyond random: 3 - 1 at L1
    assert row["transfer"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)  # the last layer (1 by construction) left out
    other = table[(table["family"] == "flat") & (table["seed"] == 0)].iloc[0]
    assert other["n_components"] == 3 and math.isnan(other["insertion"])


@pytest.mark.slow  # an MLflow store written and read back: about 11 s
def test_the_ablation_report_states_sss_from_an_mlflow_record(tmp_path, monkeypatch):
    """A sweep logged with the sweep's own writer and read back: the ablation section's notes give each family's SSS,
    the same numbers separability_table computes from the record's frame by hand."""
    from orchestrator.report.record import read
    from orchestrator.report.sections import build
    from tests.test_report import ABLATION, PROFILES, ablation_metrics, record_sweep

    monkeypatch.chdir(tmp_path)
    record_sweep(tmp_path, ABLATION.format(name="sss", model="tiny-llama", layers="[0, 1, 2, 3]"),
                 ablation_metrics(PROFILES))
    record = read(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "sss")
    lines = [n for n in build(record).notes if n.startswith("SSS ")]
    assert len(lines) == 2  # antonyms, copying
    mean = [1.0, 5.0, 2.0, 0.5]
    for family, extra in (("antonyms", 0.0), ("copying", 0.05)):
        sharp = [entropy_sharpness(np.array(mean) + 0.01 * s + extra) for s in range(3)]
        line = next(n for n in lines if n.startswith(f"SSS {family} "))
        assert f"sharpness {np.mean(sharp):.3g} ± {np.std(sharp, ddof=1):.2g}" in line, line
        assert "3 component(s)" in line and "over 3 seed(s)" in line
