"""Steering report figures: heatmaps with the prompting baseline, vector geometry, per-item shifts, generation.

Pure builders over tidy tables (the steering section makes them); each returns a matplotlib Figure.
Markers a test must find carry a gid: "prompt" (the prompting baseline on the colour bar).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from orchestrator.report.figures import CLIP_PERCENTILE, band, new_figure, robust_limit, wrapped


def steering_heatmaps(cells: pd.DataFrame, rows: list[str] | None = None, control: str = "random",
                      baseline: float | None = None, baseline_label: str = "prompt") -> Figure:
    """Layer x strength heatmap of mean ld_delta per vector type (control last), cells annotated mean / ±std.

    cells: layer (a row label), strength, vector_type, mean, std; rows: the layer labels bottom to top (default:
    the layers in order). With a prompting baseline its mean ld_delta is a column beside each heatmap (the same
    colour scale) and a line on the colour bar. Sized for reading at 100 %: two panels a row, ~60 x 45 px per
    cell at 100 dpi, 9 pt numbers. One symmetric colour scale for every panel at the CLIP_PERCENTILE-th
    percentile of |mean|; a clipped cell has a black outline (gid "clipped") and bold text, and the bar arrows.
    """
    rows = rows if rows is not None else [str(x) for x in sorted(set(cells["layer"]))]
    cells = cells.assign(layer=cells["layer"].astype(str))
    types = sorted(set(cells["vector_type"]) - {control}) + ([control] if control in set(cells["vector_type"]) else [])
    n_strengths = cells["strength"].nunique() + (2 if baseline is not None else 0)
    size = (0.62 * n_strengths + 1.3, 0.45 * len(rows) + 1.2)
    fig, axes = new_figure(len(types), cols=min(len(types), 2), size=size)
    limit = robust_limit([*cells["mean"], *([baseline] if baseline is not None else [])])
    clipped_any = bool((np.abs(cells["mean"]) > limit).any())
    image = None
    for ax, vtype in zip(axes, types):
        part = cells[cells["vector_type"] == vtype]
        mean = part.pivot(index="layer", columns="strength", values="mean").reindex(rows).sort_index(axis=1)
        std = part.pivot(index="layer", columns="strength", values="std").reindex_like(mean)
        values, spread = mean.to_numpy(float), std.to_numpy(float)
        if baseline is not None:  # the prompting baseline as a bar beside the heatmap
            values = np.column_stack([values, np.full(len(rows), np.nan), np.full(len(rows), baseline)])
        image = ax.imshow(np.clip(values, -limit, limit), cmap="RdBu", vmin=-limit, vmax=limit, origin="lower",
                          aspect="auto")
        for (i, j), value in np.ndenumerate(mean.to_numpy(float)):
            if math.isnan(value):
                ax.text(j, i, "–", ha="center", va="center", fontsize=9)
                continue
            s, clipped = spread[i, j], abs(value) > limit
            colour = "white" if abs(value) > 0.6 * limit else "black"
            ax.text(j, i + (0.12 if not math.isnan(s) else 0), f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color=colour, fontweight="bold" if clipped else "normal")
            if not math.isnan(s):
                ax.text(j, i - 0.22, f"±{s:.2f}", ha="center", va="center", fontsize=7, color=colour)
            if clipped:
                ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="black",
                                       linewidth=1.5, gid="clipped"))
        labels = [f"{s:g}" for s in mean.columns]
        if baseline is not None:
            labels += ["", baseline_label]
            ax.text(len(mean.columns) + 1, (len(rows) - 1) / 2, f"{baseline:.2f}", ha="center", va="center",
                    fontsize=9, rotation=90, color="white" if abs(baseline) > 0.6 * limit else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45 if n_strengths > 10 else 0)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("strength (units of r_L)")
        ax.set_ylabel("layer")
        ax.set_title(f"{vtype} (control)" if vtype == control else vtype)
    label = "ld_delta, mean over seeds (cells: mean, ±std)"
    if clipped_any:
        label += f"; colours clipped at ±{limit:.2g} ({CLIP_PERCENTILE}th percentile of |cell|), clipped cells outlined"
    bar = fig.colorbar(image, ax=axes, extend="both" if clipped_any else "neither",
                       label=wrapped(label, size[1] * math.ceil(len(types) / 2)))
    if baseline is not None:
        bar.ax.axhline(max(-limit, min(limit, baseline)), color="black", linewidth=2, gid="prompt")
        bar.ax.text(1.05, max(-limit, min(limit, baseline)), baseline_label, transform=bar.ax.get_yaxis_transform(),
                    fontsize=7, va="center")
    return fig


def geometry(cosines: pd.DataFrame, consistency: pd.DataFrame) -> Figure:
    """Left: each vector type's cosine to mean_diff by layer; right: each family's pair consistency by layer.

    Both tables: a `line` column, layer, mean, std (over seeds).
    """
    fig, (left, right) = new_figure(2, size=(5.2, 3.4))
    for ax, table, title, ylabel in ((left, cosines, "cosine to mean_diff at the same layer", "cosine"),
                                     (right, consistency, "pair consistency (mean cos(pair diff, mean diff))",
                                      "consistency")):
        for name, rows in table.groupby("line", sort=True):
            rows = rows.sort_values("layer")
            band(ax, rows["layer"], rows["mean"], rows["std"], label=str(name))
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def item_shifts(shifts: dict[str, np.ndarray], anti: dict[str, float]) -> Figure:
    """Per-item LD shifts (steered - clean) of a few cells, one box and its points each; the anti-steerable share
    (items moved against the strength's sign) under each label."""
    fig, (ax,) = new_figure(1, size=(max(4.5, 1.9 * len(shifts)), 3.6))
    names = list(shifts)
    ax.boxplot([shifts[n] for n in names], showfliers=False)
    rng = np.random.default_rng(0)  # jitter only: the points' x offsets
    for i, name in enumerate(names, 1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(shifts[name])), shifts[name], s=6, alpha=0.5)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\nanti-steerable {anti[n]:.0%}" for n in names], fontsize=7)
    ax.set_ylabel("per-item LD shift (steered - clean)")
    ax.set_title("Per-item shifts of the strongest cells (all seeds and families)", fontsize=9)
    return fig


def generation_lines(stats: pd.DataFrame, clean: dict[str, float], title: str) -> Figure:
    """One panel per generation metric: mean +- std over seeds by strength, one line per vector type; the
    unsteered continuation's value dashed. stats: metric, vector_type, strength, mean, std."""
    metrics = list(dict.fromkeys(stats["metric"]))
    fig, axes = new_figure(len(metrics), cols=min(4, len(metrics)), size=(3.4, 3.0))
    for ax, metric in zip(axes, metrics):
        for vtype, rows in stats[stats["metric"] == metric].groupby("vector_type", sort=True):
            rows = rows.sort_values("strength")
            band(ax, rows["strength"], rows["mean"], rows["std"], label=str(vtype))
        if metric in clean and not math.isnan(clean[metric]):
            ax.axhline(clean[metric], color="black", linestyle="--", linewidth=1, gid="unsteered")
        ax.set_xlabel("strength (units of r_L)")
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig
