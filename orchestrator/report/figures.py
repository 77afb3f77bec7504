"""Report figures: builders that take tidy DataFrames and return matplotlib Figure objects (Agg, no pyplot state).

Every builder is pure: the same tables give the same figure, nothing is read from MLflow
and no global figure registry is touched (figures are `matplotlib.figure.Figure`, rendered
by `png`). Tables come from `sections.py`: cross-seed `mean`, `std` (ddof=1) and `n` per
point. Markers a test must find carry a gid: "hub" (the hub layer, a vertical line).
"""
from __future__ import annotations

import io
import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BAND_ALPHA = 0.25
CLIP_PERCENTILE = 95  # the steering heatmap's colour scale ends at this percentile of |cell|


def new_figure(n_panels: int, cols: int | None = None, size=(4.2, 3.2), sharey=False) -> tuple[Figure, list]:
    """A figure with n_panels axes on a grid (row-major); unused grid cells are removed."""
    cols = cols or n_panels
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig, axes[:n_panels]


def png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def band(ax, x, mean, std, label: str | None = None, color=None):
    """A mean line with a +-std band (no band where std is nan: one seed)."""
    x, mean, std = np.asarray(x, float), np.asarray(mean, float), np.nan_to_num(np.asarray(std, float))
    (line,) = ax.plot(x, mean, marker="o", markersize=3, label=label, color=color)
    ax.fill_between(x, mean - std, mean + std, alpha=BAND_ALPHA, color=line.get_color(), linewidth=0)
    return line


def mark_hub(ax, layer: float, text: str) -> None:
    ax.axvline(layer, color="black", linestyle="--", linewidth=1, gid="hub")
    ax.annotate(text, (layer, 1), xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points",
                fontsize=8)


def wrapped(label: str, inches: float, points: float = 10) -> str:
    """A label broken into lines that fit `inches` of axis (at ~0.55 em per character), so it is never clipped."""
    return textwrap.fill(label, max(12, int(inches * 72 / (0.55 * points))))


def robust_limit(values) -> float:
    """Symmetric colour limit: the CLIP_PERCENTILE-th percentile of |value|, so that one extreme cell does not wash
    out every other (cells beyond it are clipped to the end colours, and marked)."""
    finite = np.abs(np.asarray(values, float))
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 1.0
    return float(np.percentile(finite, CLIP_PERCENTILE)) or float(finite.max()) or 1.0


def layer_profiles(stats: pd.DataFrame, hubs: dict, ylabel: dict | str, panel: str = "panel",
                   cols: int = 3, sharey: bool = False) -> Figure:
    """One panel per value of `panel`: mean +- std band over seeds by layer, the panel's hub marked.

    stats: panel, layer, mean, std, n; hubs: panel -> hub layer (cross-seed mode).
    """
    names = list(dict.fromkeys(stats[panel]))
    fig, axes = new_figure(len(names), cols=min(cols, len(names)), sharey=sharey)
    for ax, name in zip(axes, names):
        part = stats[stats[panel] == name].sort_values("layer")
        band(ax, part["layer"], part["mean"], part["std"])
        if name in hubs:
            mark_hub(ax, hubs[name], f"hub L{hubs[name]}")
        ax.set_title(str(name))
        ax.set_xlabel("layer")
        ax.set_ylabel(wrapped(ylabel[name] if isinstance(ylabel, dict) else ylabel, 3.2 - 0.8))
    return fig


def matrix(values: pd.DataFrame, title: str, label: str, vmin=-1.0, vmax=1.0) -> Figure:
    """A square annotated matrix (e.g. Spearman of layer rankings between methods)."""
    fig, (ax,) = new_figure(1, size=(1.1 * len(values) + 2.5, 0.9 * len(values) + 2))
    image = ax.imshow(values.to_numpy(float), cmap="RdBu", vmin=vmin, vmax=vmax)
    for (i, j), v in np.ndenumerate(values.to_numpy(float)):
        ax.text(j, i, "–" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(values.columns)), values.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(values.index)), values.index)
    ax.set_xlabel("method")
    ax.set_ylabel("method")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    return fig


def agreement_curves(stats: pd.DataFrame, x: str, xlabel: str, hub: int | None = None,
                     hub_text: str = "") -> Figure:
    """Two panels by layer: KL, and top-1 / top-5 agreement with the full model (mean +- std over seeds).

    stats: x, metric, mean, std, n with metric in kl, top1_agreement, top5_overlap.
    """
    fig, (left, right) = new_figure(2, size=(5.2, 3.4))
    for ax, metrics, ylabel in ((left, ["kl"], "KL(full || intervened)"),
                                (right, ["top1_agreement", "top5_overlap"], "agreement with the full model")):
        for metric in metrics:
            part = stats[stats["metric"] == metric].sort_values(x)
            if len(part):
                band(ax, part[x], part["mean"], part["std"], label=metric)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if hub is not None:
            mark_hub(ax, hub, hub_text)
    right.set_ylim(-0.05, 1.05)
    right.legend(fontsize=8)
    left.set_title("KL by layer")
    right.set_title("top-1 / top-5 agreement by layer")
    return fig


def set_bars(stats: pd.DataFrame, label: str) -> Figure:
    """Multi-layer skip sets: KL and top-5 overlap per set, bars with +-std error bars."""
    fig, (left, right) = new_figure(2, size=(5.2, 3.4))
    for ax, metric, ylabel in ((left, "kl", "KL(full || skipped)"), (right, "top5_overlap", "top-5 overlap")):
        part = stats[stats["metric"] == metric]
        ax.bar(range(len(part)), part["mean"], yerr=np.nan_to_num(part["std"].to_numpy(float)), capsize=3)
        ax.set_xticks(range(len(part)), part[label], rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("skipped layers")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{metric} per skipped set")
    return fig


def lines_by_layer(stats: pd.DataFrame, panel: str, line: str, ylabel: str, cols: int = 3, x: str = "layer",
                   xlabel: str = "layer") -> Figure:
    """Small multiples (one per `panel` value), one mean +- std line per `line` value, against `x` (a layer)."""
    names = list(dict.fromkeys(stats[panel]))
    fig, axes = new_figure(len(names), cols=min(cols, len(names)))
    for ax, name in zip(axes, names):
        part = stats[stats[panel] == name]
        for value, rows in part.groupby(line, sort=True):
            rows = rows.sort_values(x)
            band(ax, rows[x], rows["mean"], rows["std"], label=f"{line} {value}")
        ax.set_title(str(name))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    return fig


def scatter_with_r(points: pd.DataFrame, x: str, y: str, group: str, r: float, r_note: str,
                   xlabel: str, ylabel: str, title: str) -> Figure:
    """Scatter of y against x, one colour per `group`, the Pearson r of the points in the title."""
    fig, (ax,) = new_figure(1, size=(5.4, 4.0))
    for name, rows in points.groupby(group, sort=True):
        ax.scatter(rows[x], rows[y], s=10, alpha=0.7, label=str(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\nPearson r = {r:.2f} ({r_note})", fontsize=10)
    ax.legend(fontsize=7, title=group)
    return fig


def depth_compare(profiles: dict[str, pd.DataFrame], hubs: dict[str, float], ylabel: str, marker: str = "hub",
                  cols: int = 3) -> Figure:
    """Each profile against depth (layer / n_layers): one panel per sweep (or model), then all normalised to their
    peak on one axis; `marker` names the marked layer ("hub" only for ablation profiles, else "peak").

    profiles: name -> depth, mean, std; hubs: name -> the marked layer's depth fraction.
    """
    names = list(profiles)
    height = 3.6
    fig, axes = new_figure(len(names) + 1, cols=min(cols, len(names) + 1), size=(4.4, height))
    for ax, name in zip(axes, names):
        part = profiles[name].sort_values("depth")
        band(ax, part["depth"], part["mean"], part["std"])
        mark_hub(ax, hubs[name], f"{marker} {hubs[name]:.2f}")
        ax.set_title(name)
    overlay = axes[-1]
    for name in names:
        part = profiles[name].sort_values("depth")
        peak = float(np.nanmax(np.abs(part["mean"]))) or 1.0
        band(overlay, part["depth"], part["mean"] / peak, part["std"] / peak, label=name)
    overlay.set_title(f"{'both' if len(names) == 2 else 'all'}, each scaled to its peak")
    overlay.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("depth (layer / n_layers)")
        ax.set_xlim(-0.02, 1.0)
    for ax in axes[:-1]:
        ax.set_ylabel(wrapped(ylabel, height - 0.8))
    overlay.set_ylabel(wrapped(f"{ylabel} / peak", height - 0.8))
    return fig


def table_figure(table: pd.DataFrame, title: str) -> Figure:
    """A small table (text cells) drawn as a figure, for a page whose figures are its only tables."""
    fig, (ax,) = new_figure(1, size=(1.1 * len(table.columns) + 1, 0.3 * len(table) + 1.0))
    ax.axis("off")
    cells = ax.table(cellText=table.astype(str).to_numpy().tolist(), colLabels=list(table.columns), loc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(9)
    ax.set_title(title)
    return fig


def metric_bars(stats: pd.DataFrame, label: str, metrics: list[str]) -> Figure:
    """One panel per metric: a bar per `label` value (mean), error bars +-std; columns label, metric, mean, std."""
    fig, axes = new_figure(len(metrics), cols=min(4, len(metrics)), size=(3.4, 3.0))
    for ax, metric in zip(axes, metrics):
        part = stats[stats["metric"] == metric]
        ax.bar(range(len(part)), part["mean"], yerr=np.nan_to_num(part["std"].to_numpy(float)), capsize=3)
        ax.set_xticks(range(len(part)), part[label], rotation=30, ha="right", fontsize=8)
        top = np.nan_to_num((part["mean"] + part["std"].fillna(0)).to_numpy(float)).max(initial=0)
        ax.set_ylim(0, max(0.05, 1.15 * top))  # shares: from 0, a visible axis when every bar is 0
        ax.set_title(metric)
    return fig
