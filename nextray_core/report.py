"""The Markdown report of an evaluation run, laid out like the neXt-Ray report's Tables 2 and 3.

Table 2: per region, count and the threshold metrics with 95% bootstrap intervals, at study level
(MURA's unit) and image level (the neXt-Ray report's unit). Table 3: Cohen's kappa per region
next to the MURA paper's radiologists and Stanford ensemble and the neXt-Ray seed model, with the
caveats that make those columns hard to compare. Table 3 appears only for MURA runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from nextray_core import reference
from nextray_core.metrics import OVERALL

TABLE2_METRICS: tuple[tuple[str, str], ...] = (
    ("specificity", "Specificity"),
    ("sensitivity", "Sensitivity"),
    ("precision", "Precision"),
    ("f1", "F1"),
    ("accuracy", "Accuracy"),
    ("kappa", "Kappa"),
    ("auc", "AUC"),
)
MISSING = "n/a"


def _number(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def with_interval(table: pd.DataFrame, region: str, metric: str) -> str:
    """'0.81 (0.74-0.87)'; 'n/a' where the metric is undefined."""
    row = table.loc[region]
    value = _number(row[metric])
    low, high = _number(row.get(f"{metric}_low")), _number(row.get(f"{metric}_high"))
    if value == MISSING or low == MISSING or high == MISSING:
        return value
    return f"{value} ({low}-{high})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _ordered_regions(table: pd.DataFrame) -> list[str]:
    return [r for r in table.index if r != OVERALL] + ([OVERALL] if OVERALL in table.index else [])


def table2(table: pd.DataFrame, level: str) -> str:
    """Table 2 as Markdown: one row per region (overall last), metrics with intervals."""
    count_header = ["Studies"] if level == "study" else ["Images", "Studies"]
    count_columns = ["count"] if level == "study" else ["count", "studies"]
    header = ["Region", *count_header, *(name for _, name in TABLE2_METRICS)]
    rows = [
        [
            region,
            *(str(int(table.loc[region, c])) for c in count_columns),
            *(with_interval(table, region, metric) for metric, _ in TABLE2_METRICS),
        ]
        for region in _ordered_regions(table)
    ]
    return markdown_table(header, rows)


def confusion_table(image_table: pd.DataFrame, study_table: pd.DataFrame) -> str:
    header = ["Region", "Level", "TN", "FP", "FN", "TP"]
    rows = [
        [region, level, *(str(int(table.loc[region, c])) for c in ("tn", "fp", "fn", "tp"))]
        for region in _ordered_regions(study_table)
        for level, table in (("study", study_table), ("image", image_table))
        if region in table.index
    ]
    return markdown_table(header, rows)


def table3(image_table: pd.DataFrame, study_table: pd.DataFrame) -> str:
    """Kappa per region: this run (study and image level) beside the published columns."""
    published = reference.published_kappa()
    header = [
        "Region",
        "This model (study)",
        "This model (image)",
        *reference.KAPPA_COLUMNS.values(),
    ]
    rows = []
    for region in _ordered_regions(study_table):
        known = region in published.index
        rows.append(
            [
                region,
                with_interval(study_table, region, "kappa"),
                with_interval(image_table, region, "kappa") if region in image_table.index else "",
                *(
                    _number(float(published.loc[region, column])) if known else MISSING
                    for column in reference.KAPPA_COLUMNS
                ),
            ]
        )
    return markdown_table(header, rows)


def seed_table2() -> str:
    """The neXt-Ray report's own Table 2 (seed model, its 640-image split, threshold 0.5)."""
    seed = reference.seed_test_metrics()
    header = ["Region", "Images", *(name for _, name in TABLE2_METRICS[:-1])]
    rows = [
        [region, str(int(row["count"])), *(_number(row[m]) for m, _ in TABLE2_METRICS[:-1])]
        for region, row in seed.iterrows()
    ]
    return markdown_table(header, rows)


def _describe_run(meta: Mapping[str, Any], threshold: float, bootstrap: Mapping[str, Any]) -> str:
    members = meta.get("checkpoints", [])
    names = ", ".join(
        f"{m['name']} (sha256 {str(m.get('weights_sha256', ''))[:12]})" for m in members
    )
    ensemble = meta.get("ensemble", {})
    rule = (
        f"; ensemble of {len(members)}, combined by {ensemble.get('combine')}"
        if len(members) > 1
        else ""
    )
    data, counts = meta.get("dataset", {}), meta.get("counts", {})
    regions = ", ".join(data["regions"]) if data.get("regions") else "all"
    source = (
        "the checkpoint card's default" if threshold == meta.get("default_threshold") else "given"
    )
    lines = [
        f"- Checkpoint: {names}{rule}; {meta.get('architecture')}",
        f"- Data: {data.get('kind')} at `{data.get('root')}`, split `{data.get('split')}`, "
        f"regions: {regions}",
        f"- Evaluated: {counts.get('images')} images, {counts.get('studies')} studies "
        f"({counts.get('abnormal_studies')} abnormal), {counts.get('patients')} patients",
        f"- Threshold {threshold:g} ({source}): abnormal when probability >= threshold; a study's "
        "probability is the mean of its views' (the MURA convention)",
        f"- Intervals: {int(bootstrap.get('confidence', 0.95) * 100)}% percentile bootstrap, "
        f"{bootstrap.get('n')} resamples of whole studies stratified by region "
        f"(seed {bootstrap.get('seed')}); n/a = undefined (e.g. one class only)",
        f"- Created {meta.get('created')} with neXt-Ray {meta.get('nextray_version')}",
    ]
    return "\n".join(lines)


def render_report(
    meta: Mapping[str, Any],
    image_table: pd.DataFrame,
    study_table: pd.DataFrame,
    *,
    threshold: float,
    bootstrap: Mapping[str, Any],
    calibration: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The whole report.md for a run (see the module doc)."""
    kind = meta.get("dataset", {}).get("kind")
    parts = [
        "# neXt-Ray evaluation report",
        "Research and teaching only; not for clinical use.",
        _describe_run(meta, threshold, bootstrap),
        "## Table 2: metrics per region, study level (MURA's unit)",
        table2(study_table, "study"),
        "## Table 2: metrics per region, image level (the neXt-Ray report's unit)",
        "Image-level intervals also resample whole studies: views of one study are not "
        "independent.",
        table2(image_table, "image"),
        "## Confusion matrices",
        confusion_table(image_table, study_table),
    ]
    if calibration:
        parts += [
            "## Calibration (overall)",
            markdown_table(
                ["Level", "ECE (10 bins)", "Brier score"],
                [
                    [level, _number(values.get("ece"), 3), _number(values.get("brier"), 3)]
                    for level, values in calibration.items()
                ],
            ),
        ]
    if kind == "mura":
        parts += [
            "## Table 3: Cohen's kappa beside published numbers",
            table3(image_table, study_table),
            f"Sources: radiologists and Stanford DenseNet-169 ensemble: "
            f"{reference.SOURCES['mura']}; neXt-Ray seed ResNet-152: {reference.SOURCES['seed']}.",
            "For reference, the neXt-Ray report's Table 2 for its seed model (image level, "
            "threshold 0.5, no intervals published):",
            seed_table2(),
            "### Caveats",
            "\n".join(f"- {caveat}" for caveat in reference.CAVEATS),
        ]
    else:
        regions = ", ".join(r for r in study_table.index if r != OVERALL)
        parts += [
            "## Table 3: comparison with published MURA numbers",
            f"Omitted: this run's dataset is {kind}, not MURA. Its regions ({regions}) are not "
            "MURA study types scored on MURA's studies, so the published MURA kappas of the "
            "radiologists, the Stanford ensemble and the neXt-Ray seed model do not apply.",
        ]
    return "\n\n".join(parts) + "\n"
