"""Hub detection and rank stability on constructed KL tables with known answers."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from orchestrator.report.hubs import ablation_summary, layer_spearman, mode_and_std


def table(kl_of, seeds=(0, 1, 2), layers=range(6), families=("a", "b"), methods=("mean",), components=("layer",)):
    return pd.DataFrame([{"component": c, "method": m, "seed": s, "family": f, "layer": layer,
                          "kl": kl_of(c, m, s, f, layer)}
                         for c in components for m in methods for s in seeds for f in families for layer in layers])


def test_hub_is_the_family_mean_peak_per_seed_with_mode_and_std():
    peaks = {0: 3, 1: 3, 2: 5}

    def kl(c, m, seed, family, layer):
        # family "a" alone peaks at 1 for every seed, but the family mean peaks at peaks[seed]
        return (2.0 if layer == 1 else 0.0) * (family == "a") + (3.0 if layer == peaks[seed] else 0.5)

    out = ablation_summary(table(kl))
    assert out.metrics["hub_layer_mode"] == 3
    assert out.metrics["hub_layer_std"] == pytest.approx(pd.Series([3, 3, 5]).std(ddof=1))
    assert [out.metrics[f"hub_layer_seed_{s}"] for s in (0, 1, 2)] == [3, 3, 5]
    assert out.tables["hubs"].iloc[0]["hub_per_seed"] == "0:3,1:3,2:5"


def test_a_stable_hub_has_std_zero_and_one_seed_has_no_std():
    out = ablation_summary(table(lambda c, m, s, f, layer: float(layer == 4)))
    assert out.metrics["hub_layer_mode"] == 4 and out.metrics["hub_layer_std"] == 0
    single = ablation_summary(table(lambda c, m, s, f, layer: float(layer == 4), seeds=(7,)))
    assert single.metrics == {"hub_layer_mode": 4, "hub_layer_seed_7": 4}


def test_mode_ties_go_to_the_lowest_layer():
    assert mode_and_std(pd.Series([5, 2, 9]))[0] == 2


def test_rank_stability_spearman_and_top3():
    def kl(c, method, s, f, layer):
        return {"mean": layer, "zero": layer, "resample": -layer, "random": [5, 4, 3, 0, 1, 2][layer]}[method]

    out = ablation_summary(table(kl, methods=("mean", "zero", "resample", "random"))).tables["rank_stability"]
    pairs = {(r.method_a, r.method_b): r for r in out.itertuples()}
    assert pairs[("mean", "zero")].spearman == pytest.approx(1) and pairs[("mean", "zero")].top3_agree
    assert pairs[("mean", "resample")].spearman == pytest.approx(-1) and not pairs[("mean", "resample")].top3_agree
    assert pairs[("mean", "random")].spearman == pytest.approx(
        pd.Series(range(6)).corr(pd.Series([5, 4, 3, 0, 1, 2]), method="spearman"))
    assert len(out) == 6  # every pair of four methods once


def test_spearman_of_a_constant_ranking_is_nan():
    assert math.isnan(layer_spearman(pd.Series([1.0, 1.0, 1.0]), pd.Series([1.0, 2.0, 3.0])))


def test_no_layer_mean_rows_means_no_hub_metrics_but_a_hub_table():
    out = ablation_summary(table(lambda c, m, s, f, layer: float(layer == 2), methods=("zero",), components=("mlp",)))
    assert out.metrics == {}
    assert out.tables["hubs"].iloc[0]["hub_mode"] == 2


def test_denoising_ranks_layers_by_recovery_not_kl():
    def row(method, layer):
        # patching clean into corrupt at layer 4 recovers fully, so its KL to the clean run is smallest there
        return {"component": "layer", "method": method, "seed": 0, "family": "a", "layer": layer,
                "kl": (0.0 if layer == 4 else 2.0) if method == "clean_to_corrupt" else float(layer == 4),
                "recovery": float(layer == 4) if method == "clean_to_corrupt" else float("nan")}

    frame = pd.DataFrame([row(m, layer) for m in ("zero", "clean_to_corrupt") for layer in range(6)])
    out = ablation_summary(frame)
    hubs = out.tables["hubs"].set_index("method")
    assert hubs.loc["clean_to_corrupt", "hub_mode"] == 4 == hubs.loc["zero", "hub_mode"]
    assert out.tables["rank_stability"].iloc[0]["spearman"] == pytest.approx(1)
