"""The Metrics page's figures as PNG files, drawn by matplotlib's Agg canvas.

plotly's own PNG export needs kaleido and a Chrome; matplotlib needs nothing beyond the package
registry and draws offline, so every figure downloads as a PNG of a few tens of kB instead of a
4.8 MB HTML file carrying plotly.js. Each function takes the same data as its interactive
namesake in ``dashboard.figures`` (one place decides what a figure shows: the page).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dashboard.figures import PALETTE, Curve
from nextray_core.html_report import png_bytes as png


def _curves(curves: Sequence[Curve], x: str, y: str, title: str, labels: tuple[str, str]):
    figure = Figure(figsize=(5.6, 5.0))
    axes = figure.subplots()
    for i, curve in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        axes.plot(curve.points[x], curve.points[y], color=colour, linewidth=1.6, label=curve.label)
        axes.plot(*curve.operating_point, marker="*", markersize=14, color=colour,
                  markeredgecolor="black", linestyle="none",
                  label=f"{curve.label}: current threshold")  # fmt: skip
    axes.set(
        xlabel=labels[0], ylabel=labels[1], title=title, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02)
    )
    return figure, axes


def roc_png(curves: Sequence[Curve], title: str) -> bytes:
    figure, axes = _curves(curves, "fpr", "tpr", title,
                           ("1 - specificity (FPR)", "sensitivity (TPR)"))  # fmt: skip
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    axes.legend(fontsize=8, loc="lower right")
    return png(figure)


def pr_png(curves: Sequence[Curve], title: str, prevalence: float) -> bytes:
    figure, axes = _curves(curves, "recall", "precision", title,
                           ("recall (sensitivity)", "precision"))  # fmt: skip
    axes.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label="prevalence")
    axes.legend(fontsize=8, loc="lower left")
    return png(figure)


def confusion_png(table: pd.DataFrame, class_names: tuple[str, str]) -> bytes:
    """One 2 x 2 matrix per region: rows truth, columns prediction."""
    names = list(table.index)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    grid = np.atleast_1d(figure.subplots(rows, cols, squeeze=False).ravel())
    for axes, name in zip(grid, names, strict=False):
        tn, fp, fn, tp = (int(table.loc[name, c]) for c in ("tn", "fp", "fn", "tp"))
        counts = np.array([[tn, fp], [fn, tp]], dtype=float)
        axes.imshow(counts, cmap="Blues")
        for (i, j), text in np.ndenumerate(np.array([["TN", "FP"], ["FN", "TP"]])):
            dark = counts[i, j] > counts.max() / 2
            axes.text(j, i, f"{text} {int(counts[i, j])}", ha="center", va="center",
                      color="white" if dark else "black")  # fmt: skip
        wrapped = [c.replace(" ", "\n") for c in class_names]
        axes.set_xticks([0, 1], wrapped, fontsize=8)
        axes.set_yticks([0, 1], wrapped, fontsize=8)
        axes.set_title(f"{name} (n={table.loc[name, 'count']})", fontsize=10)
    for axes in grid[len(names) :]:
        axes.set_axis_off()
    return png(figure)


def kappa_png(
    tables: Sequence[tuple[str, pd.DataFrame]],
    references: pd.DataFrame,
    labels: Mapping[str, str],
) -> bytes:
    """Each run's kappa per region with its interval, and published kappas as marks."""
    regions = list(tables[0][1].index)
    figure = Figure(figsize=(8.0, 4.8))
    axes = figure.subplots()
    where = np.arange(len(regions))
    width = 0.8 / len(tables)
    for i, (run_label, table) in enumerate(tables):
        table = table.reindex(regions)
        kappa = table["kappa"].to_numpy(dtype=float)
        error = np.vstack([
            (kappa - table["kappa_low"].to_numpy(dtype=float)).clip(min=0),
            (table["kappa_high"].to_numpy(dtype=float) - kappa).clip(min=0),
        ])  # fmt: skip
        axes.bar(where + (i - (len(tables) - 1) / 2) * width, kappa, width, yerr=error,
                 color=PALETTE[i % len(PALETTE)], alpha=0.6, ecolor="#333333", capsize=3,
                 label=f"{run_label} (95% bootstrap interval)")  # fmt: skip
    markers = iter("osD^vx")
    for column, name in labels.items():
        shown = [r for r in regions if r in references.index]
        if column not in references.columns or not shown:
            continue
        axes.plot([regions.index(r) for r in shown], [references.loc[r, column] for r in shown],
                  marker=next(markers, "o"), markersize=8, linestyle="none", fillstyle="none",
                  markeredgewidth=2, label=name)  # fmt: skip
    lowest = min(float(np.nanmin(t["kappa_low"].fillna(0))) for _, t in tables)
    axes.set_xticks(where, regions)
    axes.set(ylabel="Cohen's kappa", ylim=(min(0.0, lowest), 1.05))
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    return png(figure)


def reliability_png(bins: Sequence[tuple[str, pd.DataFrame, float]]) -> bytes:
    """Observed positive rate against mean predicted probability per bin (marker area ~ n)."""
    figure = Figure(figsize=(5.6, 5.0))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for i, (label, table, ece) in enumerate(bins):
        used = table[table["count"] > 0]
        colour = PALETTE[i % len(PALETTE)]
        axes.plot(used["mean_probability"], used["observed_rate"], color=colour,
                  label=f"{label} (ECE {ece:.3f})")  # fmt: skip
        sizes = 20 + 180 * used["count"] / used["count"].max()
        axes.scatter(used["mean_probability"], used["observed_rate"], s=sizes, color=colour)
    axes.set(xlabel="mean predicted probability", ylabel="observed positive rate",
             xlim=(0, 1), ylim=(-0.02, 1.02))  # fmt: skip
    axes.legend(fontsize=8, loc="upper left")
    return png(figure)
