"""A model card's metrics as console text: every metric table with its 95% intervals.

A card's ``metrics`` holds named entries (validation metrics written at release, test metrics
written by ``nextray evaluate``...); an entry that is a metric table (region -> counts and
metrics with ``_low``/``_high`` bounds, as ``metrics.table_to_dict`` writes it) is printed as one
row per region, overall last; plain values are printed as they are. Pure Python: ``nextray card``
prints this before any weights are read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

OVERALL = "overall"  # metrics.OVERALL, spelled here so that printing a card needs no pandas
CARD_METRICS: tuple[tuple[str, str], ...] = (
    ("auc", "AUC (95% CI)"),
    ("sensitivity", "sensitivity (95% CI)"),
    ("specificity", "specificity (95% CI)"),
)
MISSING = "n/a"


def is_metric_table(value: Any) -> bool:
    """A region -> metrics mapping (every row has at least one of the metrics shown)."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(
            isinstance(row, Mapping) and any(name in row for name, _ in CARD_METRICS)
            for row in value.values()
        )
    )


def _number(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return MISSING
    return f"{value:.2f}"


def with_interval(row: Mapping[str, Any], metric: str) -> str:
    """'0.84 (0.80-0.88)'; the value alone without bounds; 'n/a' where undefined."""
    value = _number(row.get(metric))
    low, high = _number(row.get(f"{metric}_low")), _number(row.get(f"{metric}_high"))
    if MISSING in (value, low, high):
        return value
    return f"{value} ({low}-{high})"


def format_metric_table(table: Mapping[str, Mapping[str, Any]]) -> str:
    """One aligned row per region (overall last): images, positives and the card's metrics."""
    regions = [r for r in table if r != OVERALL] + ([OVERALL] if OVERALL in table else [])
    header = ["region", "images", "positive", *(title for _, title in CARD_METRICS)]
    rows = [
        [
            region,
            _count(table[region].get("count")),
            _count(table[region].get("abnormal")),
            *(with_interval(table[region], metric) for metric, _ in CARD_METRICS),
        ]
        for region in regions
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join("  " + line.rstrip() for line in lines)


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, int | float | str | bool)


def _plain(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _count(value: Any) -> str:
    return str(int(value)) if isinstance(value, int | float) and not isinstance(value, bool) else ""


def format_card_metrics(metrics: Mapping[str, Any]) -> str:
    """All metric tables of a card with intervals, plain values beside them; other entries
    (lists, nested settings) are named with a pointer to ``--json``."""
    if not metrics:
        return "metrics:       none recorded in the card (nextray evaluate writes a run's)"
    parts: list[str] = []
    other: list[str] = []
    for name, value in metrics.items():
        if is_metric_table(value):
            parts.append(f"{name}:\n{format_metric_table(value)}")
        elif isinstance(value, Mapping) and any(is_metric_table(v) for v in value.values()):
            # a run's metrics.json shape (release writes it as "validation"): its threshold,
            # then one table per level (image, study)
            if _is_plain(value.get("threshold")):
                parts.append(f"{name}: at threshold {_plain(value['threshold'])}")
            parts += [
                f"{name} ({level}):\n{format_metric_table(table)}"
                for level, table in value.items()
                if is_metric_table(table)
            ]
        elif _is_plain(value):
            parts.append(f"{name}: {_plain(value)}")
        elif isinstance(value, Mapping) and value and all(_is_plain(v) for v in value.values()):
            parts.append(f"{name}: " + ", ".join(f"{k} {_plain(v)}" for k, v in value.items()))
        else:
            other.append(name)
    if other:
        parts.append(f"also recorded (nextray card --json): {', '.join(other)}")
    return "\n".join(parts)
