"""Hub detection and rank stability of ablation sweeps (DESIGN §6, §8): pure functions on the finished runs."""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
from rich.markup import escape  # method[positions] is no style tag
from rich.table import Table

from interventions.ablation import HUB, effect_metric, variant
from interventions.metrics import spearman
from orchestrator.numbers import fmt

METRIC = "effect"  # what layers are ranked by: interventions.ablation.effect_metric of each method


@dataclass
class Summary:
    """What a kind adds at the end of a sweep, after the cross-seed table."""

    tables: dict[str, pd.DataFrame]  # name -> table, saved as <name>.parquet and logged on the parent run
    metrics: dict[str, float]  # parent-run metrics
    views: list[Table] = field(default_factory=list)  # printed after the aggregate table


def safe_name(text: str) -> str:
    """`text` as a file and MLflow-metric name: a folder path or a label with spaces becomes word characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def per_model(summarise: Callable[[pd.DataFrame], Summary]) -> Callable[[pd.DataFrame], Summary]:
    """`summarise` run on each model's rows apart when `frame` holds several models (a `model` column): its tables
    gain a leading `model` column, its metrics are named `<model>/<metric>` (the model as a safe name),
    its views' titles start with the model."""
    return _per("model", summarise)


ACROSS = {"length": "lengths", "precision": "precisions"}  # axes whose values a summary compares: axis -> plural


def ordered_values(frame: pd.DataFrame, axis: str) -> list[str]:
    """The axis' values as text: length buckets from the shortest (by their token range), other axes in the order
    the rows hold them (a record read back from MLflow holds them in run order, not the spec's)."""
    values = list(dict.fromkeys(frame[axis].dropna().astype(str)))
    if axis == "length":
        from interventions.length import bucket

        values.sort(key=bucket)
    return values


def in_order(frame: pd.DataFrame, axis: str) -> pd.DataFrame:
    """`frame`'s rows sorted (stably) by ordered_values of `axis`, so that groupby(sort=False) meets them in order."""
    rank = {v: i for i, v in enumerate(ordered_values(frame, axis))}
    return frame.iloc[frame[axis].astype(str).map(rank).argsort(kind="stable")]


def per_axis(axis: str, summarise: Callable[[pd.DataFrame], Summary],
             across: Callable[[pd.DataFrame], Summary] | None = None) -> Callable[[pd.DataFrame], Summary]:
    """`summarise` run on each value's rows apart when `frame` holds several values of `axis` (a column of that
    name), as per_model does for models (metrics `<axis>_<value>/<metric>`: MLflow refuses '=' in a name);
    `across(frame)` adds what compares the values (the hub per family across them)."""
    each = _per(axis, summarise, f"{axis}_")

    @functools.wraps(summarise)
    def both(frame: pd.DataFrame) -> Summary:
        out = each(frame)
        if across is None or axis not in frame or frame[axis].nunique() < 2:
            return out
        more = across(frame)
        return Summary({**out.tables, **more.tables}, {**out.metrics, **more.metrics}, [*out.views, *more.views])

    return both


def _per(column: str, summarise: Callable[[pd.DataFrame], Summary], prefix: str = "") -> Callable:
    @functools.wraps(summarise)
    def each(frame: pd.DataFrame) -> Summary:
        values = list(dict.fromkeys(frame[column].dropna().astype(str))) if column in frame else []
        if len(values) < 2:
            return summarise(frame)
        tables: dict[str, list[pd.DataFrame]] = {}
        metrics, views = {}, []
        for value in values:
            one = summarise(frame[frame[column].astype(str) == value].reset_index(drop=True))
            for name, table in one.tables.items():
                tables.setdefault(name, []).append(table.assign(**{column: value})[[column, *table.columns]])
            metrics.update({f"{prefix}{safe_name(value)}/{key}": v for key, v in one.metrics.items()})
            for view in one.views:
                view.title = f"{value}: {view.title}"
            views += one.views
        return Summary({name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}, metrics, views)

    return each


def moves_table(axis: str, values: dict[str, dict[str, object]], what: str) -> tuple[pd.DataFrame, Table]:
    """Per value of `axis` (in order; the first is the reference): `what` per key ("family:hub, ..."), and whether
    any key's differs from the reference value's. values: axis value -> key -> what (keys the reference lacks are
    not compared)."""
    reference = next(iter(values.values()), {})
    rows = []
    for value, got in values.items():
        moved = [k for k, v in got.items() if k in reference and v != reference[k]]
        rows.append({axis: value, f"{what}_per_family": ", ".join(f"{k}:{v}" for k, v in got.items()),
                     "moves": bool(moved), "moved": ", ".join(moved)})
    table = pd.DataFrame(rows, columns=[axis, f"{what}_per_family", "moves", "moved"])
    first = next(iter(values), "")
    label = what.replace("_", " ")
    view = Table(title=f"{label} per family by {axis}: does it move from {first} (the reference)?",
                 title_justify="left")
    for name in (axis, f"{label} per family", "moves?"):
        view.add_column(name)
    for _, r in table.iterrows():
        view.add_row(str(r[axis]), escape(r[f"{what}_per_family"]),
                     "reference" if r[axis] == first else ("moves: " + r["moved"] if r["moves"] else "stays"))
    return table, view


def hubs_across(axis: str) -> Callable[[pd.DataFrame], Summary]:
    """What compares the hub across the values of `axis` (length buckets, precisions): per family, the hub
    (cross-seed mode of each seed's largest-effect layer, component/method HUB) at each value, 'hub stable across
    <values>' when every value has the same hub, else 'hub moves across <values>' (table hubs_across_<values>,
    metric hub_stable_across_<values>: the share of families whose hub stays); and per value, each family's hub and
    whether it moves from the first value's (table hubs_by_<axis>)."""
    plural = ACROSS.get(axis, f"{axis}s")

    def across(frame: pd.DataFrame) -> Summary:
        rows, by_value = [], {}
        picks = hub_picks(frame, axis)
        for family, own in picks.groupby("family", sort=False):
            hubs = {}
            for value, part in own.groupby("value", sort=False):
                hubs[value] = mode_and_std(part["pick"])[0]
                by_value.setdefault(value, {})[str(family)] = f"L{hubs[value]}"
            if len(hubs) >= 2:
                stable = len(set(hubs.values())) == 1
                rows.append({"family": family, f"hub_per_{axis}": ",".join(f"{k}:{v}" for k, v in hubs.items()),
                             "verdict": f"hub stable across {plural}" if stable else f"hub moves across {plural}",
                             "stable": stable})
        table = pd.DataFrame(rows, columns=["family", f"hub_per_{axis}", "verdict", "stable"])
        noun = "prompt lengths" if axis == "length" else plural
        view = Table(title=f"hub per family across {noun} ({HUB[0]}/{HUB[1]}, cross-seed mode per {axis})",
                     title_justify="left")
        for name in ("family", f"hub per {axis}", "verdict"):
            view.add_column(name)
        for _, r in table.iterrows():
            view.add_row(str(r["family"]), r[f"hub_per_{axis}"], r["verdict"])
        metrics = {f"hub_stable_across_{plural}": float(table["stable"].mean())} if len(table) else {}
        if not len(table):
            return Summary({f"hubs_across_{plural}": table}, metrics, [])
        order = [str(v) for v in dict.fromkeys(frame[axis]) if str(v) in by_value]
        moves, moves_view = moves_table(axis, {v: by_value[v] for v in order}, "hub")
        return Summary({f"hubs_across_{plural}": table, f"hubs_by_{axis}": moves}, metrics, [view, moves_view])

    across.__name__ = f"hubs_across_{plural}"
    return across


def hub_picks(frame: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Each seed's hub (component/method HUB) per family and value of `axis`: columns family, value, seed, pick."""
    rows, frame = [], in_order(frame, axis)
    for (family, value), part in frame.groupby(["family", frame[axis].astype(str)], sort=False):
        profile = layer_profiles(part)
        main = profile[(profile["component"] == HUB[0]) & (profile["method"] == HUB[1])]
        rows += [{"family": family, "value": value, "seed": int(s), "pick": int(h)} for s, h in hub_of(main).items()]
    return pd.DataFrame(rows, columns=["family", "value", "seed", "pick"])


hubs_across_lengths = hubs_across("length")
hubs_across_precisions = hubs_across("precision")


def with_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of a sweep with a `positions` axis: the method labelled with its variant ("mean[last]"; `all` keeps the
    bare name, so the hub is still `layer`/`mean`), the positions column dropped (idempotent)."""
    if "positions" not in frame:
        return frame
    labels = [variant(m, p if isinstance(p, str) else None) for m, p in zip(frame["method"], frame["positions"])]
    return frame.assign(method=labels).drop(columns="positions")


SINK_RATIO, SINK_JUMP = 10.0, 2.0  # a layer writes the first-position activation: ratio >= 10 and >= 2x the layer below


def sink_writers(frame: pd.DataFrame) -> dict[int, tuple[float, float]]:
    """Layers where the first-position (attention-sink) activation is written, from the ablation runs'
    `first_norm_ratio` (mean over seeds and families): layer -> (ratio at the layer below, ratio here). A layer is a
    writer when its ratio is at least SINK_RATIO and SINK_JUMP times the swept layer below it (layer 0: than 1)."""
    if "first_norm_ratio" not in frame or frame["first_norm_ratio"].isna().all():
        return {}
    ratio = frame.groupby("layer")["first_norm_ratio"].mean().dropna().sort_index()
    out, below = {}, 1.0
    for layer, value in ratio.items():
        if value >= SINK_RATIO and value >= SINK_JUMP * below:
            out[int(layer)] = (below, float(value))
        below = value
    return out


def layer_profiles(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean effect over families per (component, method, seed, layer); head trials are left out (one head, not a layer).

    The effect is `kl` (how far the ablation moves the clean prediction), and `recovery` for a
    method acting on the corrupt run (denoising), whose KL to the clean run is smallest exactly
    where the patch matters most.
    """
    frame = with_variants(frame)
    rows = frame[frame["component"] != "head"].copy()
    rows[METRIC] = float("nan")
    for method in rows["method"].unique():
        pick, metric = rows["method"] == method, effect_metric(method)
        rows.loc[pick, METRIC] = rows.loc[pick, metric] if metric in rows else float("nan")
    return rows.groupby(["component", "method", "seed", "layer"], as_index=False)[METRIC].mean()


def hub_of(profile: pd.DataFrame) -> pd.Series:
    """Per seed, the layer with the largest family-mean effect (ties: the lowest layer)."""
    ordered = profile.sort_values(["seed", METRIC, "layer"], ascending=[True, False, True])
    return ordered.groupby("seed")["layer"].first()


def mode_and_std(layers: pd.Series) -> tuple[int, float]:
    """Most frequent hub layer (ties: the lowest) and the std (ddof=1; nan for one seed)."""
    counts = layers.value_counts()
    mode = int(min(counts.index[counts == counts.max()]))
    return mode, float(layers.std(ddof=1)) if len(layers) > 1 else float("nan")


def top_layers(profile: pd.DataFrame, k: int = 3) -> list[int]:
    """The k layers with the largest effect averaged over seeds and families."""
    return [int(x) for x in profile.groupby("layer")[METRIC].mean().sort_values(ascending=False).index[:k]]


def layer_spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman correlation of two per-layer series over the layers both have (nan if one is constant)."""
    joined = pd.concat([a, b], axis=1, join="inner").dropna()
    return spearman(joined.iloc[:, 0].tolist(), joined.iloc[:, 1].tolist())


def hub_table(profiles: pd.DataFrame) -> pd.DataFrame:
    """One row per (component, method): hub per seed, its mode and std, and the top-3 layers."""
    rows = []
    for (component, method), profile in profiles.groupby(["component", "method"], sort=False):
        hubs = hub_of(profile)
        mode, std = mode_and_std(hubs)
        rows.append({"component": component, "method": method, "seeds": len(hubs),
                     "hub_per_seed": ",".join(f"{s}:{int(h)}" for s, h in hubs.items()),
                     "hub_mode": mode, "hub_std": std, "top3": ",".join(map(str, top_layers(profile)))})
    return pd.DataFrame(rows)


def rank_stability(profiles: pd.DataFrame) -> pd.DataFrame:
    """Per component, for each pair of methods: Spearman of the layer rankings and whether the top-3 sets agree."""
    rows = []
    for component, by_component in profiles.groupby("component", sort=False):
        methods = list(dict.fromkeys(by_component["method"]))
        means = {m: by_component[by_component["method"] == m].groupby("layer")[METRIC].mean() for m in methods}
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                top_a, top_b = list(means[a].nlargest(3).index), list(means[b].nlargest(3).index)
                rows.append({"component": component, "method_a": a, "method_b": b,
                             "spearman": layer_spearman(means[a], means[b]), "top3_a": ",".join(map(str, top_a)),
                             "top3_b": ",".join(map(str, top_b)), "top3_agree": set(top_a) == set(top_b)})
    return pd.DataFrame(rows, columns=["component", "method_a", "method_b", "spearman", "top3_a", "top3_b",
                                       "top3_agree"])


def ablation_summary(frame: pd.DataFrame) -> Summary:
    """Hubs per (component, method) with cross-seed mode and std; Spearman and top-3 agreement across methods."""
    profiles = layer_profiles(frame)
    hubs, stability = hub_table(profiles), rank_stability(profiles)
    metrics: dict[str, float] = {}
    main = profiles[(profiles["component"] == HUB[0]) & (profiles["method"] == HUB[1])]
    if len(main):
        per_seed = hub_of(main)
        mode, std = mode_and_std(per_seed)
        metrics["hub_layer_mode"] = mode
        if not math.isnan(std):
            metrics["hub_layer_std"] = std
        metrics.update({f"hub_layer_seed_{seed}": int(layer) for seed, layer in per_seed.items()})
    view = Table(title="hub per seed: the layer with the largest effect (KL; recovery for denoising) "
                       "averaged over families", title_justify="left")
    for name in ("component", "method", "hub per seed", "mode", "std", "top-3 layers"):
        view.add_column(name)
    for _, r in hubs.iterrows():
        view.add_row(r["component"], escape(r["method"]), r["hub_per_seed"], f"L{r['hub_mode']}",
                     fmt(r["hub_std"], ".2f"), r["top3"])
    views = [view]
    if len(stability):
        ranks = Table(title="rank stability across methods (layers ranked by mean effect)", title_justify="left")
        for name in ("component", "methods", "spearman", "top-3", "top-3 agree"):
            ranks.add_column(name)
        for _, r in stability.iterrows():
            ranks.add_row(r["component"], escape(f"{r['method_a']} vs {r['method_b']}"), fmt(r["spearman"], ".2f"),
                          f"{r['top3_a']} | {r['top3_b']}", "yes" if r["top3_agree"] else "no")
        views.append(ranks)
    return Summary({"hubs": hubs, "rank_stability": stability}, metrics, views)

