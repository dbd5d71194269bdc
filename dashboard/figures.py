"""Plotly figures and display formatting for the pages: presentation only, numbers come in.

Every number drawn here was computed by nextray_core (metric tables, curve points, reliability
bins, published kappas); these functions only lay them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nextray_core.metrics import METRICS

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
REFERENCE_STYLE = {
    "radiologist_1": ("circle-open", "#444444"),
    "radiologist_2": ("square-open", "#444444"),
    "radiologist_3": ("diamond-open", "#444444"),
    "stanford_densenet169_ensemble": ("x", "#ff7f0e"),
    "nextray_seed_resnet152": ("triangle-up-open", "#8c564b"),
}
_LAYOUT = {
    "margin": {"l": 50, "r": 20, "t": 40, "b": 100},
    "height": 480,
    "legend": {"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0, "font": {"size": 11}},
}


@dataclass(frozen=True)
class Curve:
    """One run's curve points (from nextray_core.curves) and its operating point."""

    label: str
    points: pd.DataFrame
    operating_point: tuple[float, float]  # (x, y) at the current threshold


def roc_figure(curves: Sequence[Curve], title: str) -> go.Figure:
    """ROC curves; the first carries its thresholds so a click on it can set the threshold."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot"}))
    for i, curve in enumerate(curves):
        _curve_traces(fig, curve, "fpr", "tpr", PALETTE[i % len(PALETTE)], clickable=i == 0)
    fig.update_layout(
        title=title, xaxis_title="1 - specificity (FPR)", yaxis_title="sensitivity (TPR)", **_LAYOUT
    )
    fig.update_xaxes(range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def pr_figure(curves: Sequence[Curve], title: str, prevalence: float) -> go.Figure:
    fig = go.Figure()
    fig.add_hline(y=prevalence, line_dash="dot", annotation_text="prevalence")
    for i, curve in enumerate(curves):
        _curve_traces(fig, curve, "recall", "precision", PALETTE[i % len(PALETTE)])
    fig.update_layout(
        title=title, xaxis_title="recall (sensitivity)", yaxis_title="precision", **_LAYOUT
    )
    fig.update_xaxes(range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def _curve_traces(
    fig: go.Figure, curve: Curve, x: str, y: str, colour: str, *, clickable: bool = False
) -> None:
    fig.add_trace(
        go.Scatter(
            x=curve.points[x],
            y=curve.points[y],
            customdata=curve.points["threshold"],
            mode="lines+markers",
            marker={"size": 5 if clickable else 3},
            line={"color": colour},
            name=curve.label,
            hovertemplate=f"threshold %{{customdata:.3f}}<br>{x} %{{x:.3f}}<br>{y} %{{y:.3f}}",
            meta="clickable" if clickable else "",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[curve.operating_point[0]],
            y=[curve.operating_point[1]],
            mode="markers",
            marker={"size": 14, "symbol": "star", "color": colour, "line": {"width": 1}},
            name=f"{curve.label}: current threshold",
            hoverinfo="skip",
        )
    )


def threshold_from_selection(event: Mapping | None, clickable_curve: int = 1) -> float | None:
    """The threshold of the clicked point on the first run's ROC trace, if one was clicked."""
    points = ((event or {}).get("selection") or {}).get("points") or []
    for point in points:
        if point.get("curve_number") != clickable_curve:
            continue
        value = point.get("customdata")
        value = value[0] if isinstance(value, list | tuple) and value else value
        if isinstance(value, int | float) and math.isfinite(value):
            return float(min(1.0, max(0.0, value)))
    return None


def confusion_figure(
    table: pd.DataFrame, class_names: tuple[str, str] = ("normal", "abnormal")
) -> go.Figure:
    """One 2x2 heat map per region from a metric table: rows truth, columns prediction."""
    names = list(table.index)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"{n} (n={table.loc[n, 'count']})" for n in names],
        horizontal_spacing=0.1,
        vertical_spacing=0.3 / rows,
    )
    for i, name in enumerate(names):
        tn, fp, fn, tp = (int(table.loc[name, c]) for c in ("tn", "fp", "fn", "tp"))
        fig.add_trace(
            go.Heatmap(
                z=[[tn, fp], [fn, tp]],
                x=list(class_names),
                y=list(class_names),
                text=[[f"TN {tn}", f"FP {fp}"], [f"FN {fn}", f"TP {tp}"]],
                texttemplate="%{text}",
                colorscale="Blues",
                showscale=False,
                hovertemplate="truth %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_xaxes(tickangle=0, side="bottom")
    # "not fractured" would be clipped beside a narrow heat map: one word per line
    wrapped = [name.replace(" ", "<br>") for name in class_names]
    fig.update_yaxes(autorange="reversed", tickvals=list(class_names), ticktext=wrapped)
    fig.update_layout(height=250 * rows + 40, margin={"l": 80, "r": 20, "t": 50, "b": 30})
    return fig


def kappa_figure(
    tables: Sequence[tuple[str, pd.DataFrame]],
    references: pd.DataFrame,
    labels: Mapping[str, str],
) -> go.Figure:
    """Each run's kappa per region with its interval (bars), and published kappas as marks."""
    regions = list(tables[0][1].index)
    fig = go.Figure()
    for i, (run_label, table) in enumerate(tables):
        table = table.reindex(regions)
        kappa = table["kappa"]
        fig.add_trace(
            go.Bar(
                x=regions,
                y=kappa,
                name=f"{run_label} (95% bootstrap interval)",
                marker={"color": PALETTE[i % len(PALETTE)], "opacity": 0.55},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (table["kappa_high"] - kappa).clip(lower=0),
                    "arrayminus": (kappa - table["kappa_low"]).clip(lower=0),
                    "color": "#333333",
                },
            )
        )
    for column, name in labels.items():
        shown = [r for r in regions if r in references.index]
        if column not in references.columns or not shown:
            continue
        symbol, colour = REFERENCE_STYLE.get(column, ("circle", "#000000"))
        fig.add_trace(
            go.Scatter(
                x=shown,
                y=[references.loc[r, column] for r in shown],
                mode="markers",
                name=name,
                marker={"symbol": symbol, "size": 12, "color": colour, "line": {"width": 2}},
            )
        )
    lowest = min(float(np.nanmin(t["kappa_low"].fillna(0))) for _, t in tables)
    fig.update_layout(
        barmode="group",
        yaxis_title="Cohen's kappa",
        legend={"orientation": "h", "yanchor": "top", "y": -0.12, "font": {"size": 11}},
        margin={"l": 50, "r": 20, "t": 30, "b": 40},
        height=480,
    )
    fig.update_yaxes(range=[min(0.0, lowest), 1.05])
    return fig


def reliability_figure(bins: Sequence[tuple[str, pd.DataFrame, float]]) -> go.Figure:
    """Observed abnormal rate against mean predicted probability per bin, with the diagonal."""
    fig = go.Figure(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={"dash": "dot"}
        )
    )
    for i, (label, table, ece) in enumerate(bins):
        used = table[table["count"] > 0]
        fig.add_trace(
            go.Scatter(
                x=used["mean_probability"],
                y=used["observed_rate"],
                mode="lines+markers",
                name=f"{label} (ECE {ece:.3f})",
                marker={"size": 6 + 14 * np.sqrt(used["count"] / used["count"].max())},
                line={"color": PALETTE[i % len(PALETTE)]},
                customdata=used["count"],
                hovertemplate="mean probability %{x:.2f}<br>observed %{y:.2f}<br>n=%{customdata}",
            )
        )
    fig.update_layout(
        xaxis_title="mean predicted probability",
        yaxis_title="observed abnormal rate",
        **_LAYOUT,
    )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def table2(table: pd.DataFrame) -> pd.DataFrame:
    """The report's Table 2 layout: counts, then each metric as 'value (low-high)'.

    Columns a table lacks (e.g. a card that recorded only some metrics) are left out.
    """
    shown = table[[c for c in ("count", "studies", "abnormal") if c in table.columns]].copy()
    for metric in (m for m in METRICS if m in table.columns):
        low = table.get(f"{metric}_low", pd.Series(np.nan, index=table.index))
        high = table.get(f"{metric}_high", pd.Series(np.nan, index=table.index))
        shown[metric] = [
            _with_interval(v, lo, hi) for v, lo, hi in zip(table[metric], low, high, strict=True)
        ]
    return shown


def table2_compared(tables: Sequence[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Table 2 of several runs, each region's rows together (region, run) for comparison."""
    if len(tables) == 1:
        return table2(tables[0][1])
    joined = pd.concat({label: table2(t) for label, t in tables}, names=["run", "region"])
    order = list(dict.fromkeys(r for _, t in tables for r in t.index))
    runs = [label for label, _ in tables]
    joined = joined.swaplevel().reindex(
        pd.MultiIndex.from_product([order, runs], names=["region", "run"])
    )
    return joined.dropna(how="all")


def _with_interval(value: float, low: float, high: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        return f"{value:.2f} ({low:.2f}-{high:.2f})"
    return f"{value:.2f}"


def interval_bars(
    table: pd.DataFrame,
    value: str,
    low: str | None = None,
    high: str | None = None,
    *,
    title: str,
    axis: str,
    baseline: str | None = None,
    baseline_name: str = "",
    zero_line: bool = False,
) -> go.Figure:
    """One bar per row of ``table`` (index = region) with its 95% interval (columns ``low`` and
    ``high``, if given) and, optionally, a marker for what a baseline scores on the same images
    (a uniform map, say)."""
    regions = [str(r) for r in table.index]
    values = table[value].to_numpy(dtype=float)
    error = None
    if low is not None and high is not None:
        error = {
            "type": "data",
            "symmetric": False,
            "array": table[high].to_numpy(dtype=float) - values,
            "arrayminus": values - table[low].to_numpy(dtype=float),
        }
    fig = go.Figure(
        go.Bar(
            x=regions,
            y=values,
            name=value.replace("_", " "),
            error_y=error,
            customdata=table["images"].to_numpy(),
            hovertemplate="%{x}: %{y:.3f} (%{customdata} images)<extra></extra>",
        )
    )
    if baseline is not None:
        fig.add_trace(
            go.Scatter(
                x=regions,
                y=table[baseline].to_numpy(dtype=float),
                mode="markers",
                name=baseline_name,
                marker={
                    "symbol": "line-ew-open",
                    "size": 28,
                    "color": "#e4572e",
                    "line": {"width": 3, "color": "#e4572e"},
                },
                hovertemplate="%{x}: " + baseline_name + " %{y:.3f}<extra></extra>",
            )
        )
    if zero_line:
        fig.add_hline(y=0, line_dash="dot", annotation_text="a random map")
    fig.update_layout(title=title, yaxis_title=axis, height=360, margin={"t": 50, "b": 40})
    return fig
