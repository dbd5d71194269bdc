"""A self-contained HTML report of a run: per-region metrics with intervals at one threshold,
ROC curves, confusion matrices, calibration, and chosen cases with their maps.

Everything is inside the one file (figures are PNGs in ``data:`` URIs, no script, no link to
any server), so it opens offline, mails as an attachment and prints. Figures are drawn with
matplotlib's Agg canvas (no browser, no kaleido; thread-safe, so the dashboard can call it);
the same functions give the dashboard's PNG downloads.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nextray_core.errors import DatasetError
from nextray_core.metrics import OVERALL, predicted_labels
from nextray_core.report import TABLE2_METRICS, with_interval
from nextray_core.run_map import outcome
from nextray_core.runs import Run, evaluate_predictions

CASE_SIDE = 480  # px: the report stays a few MB
CASE_KINDS: tuple[str, ...] = ("false positive", "false negative", "true positive", "true negative")


@dataclass(frozen=True)
class Case:
    """One chosen image for the report: a title, a caption and the picture (RGB or gray)."""

    title: str
    caption: str
    picture: np.ndarray


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def image_png(picture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(picture, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _regions(summary: Mapping[str, Any]) -> list[str]:
    return [r for r in summary if r != OVERALL] + [OVERALL]


def roc_figure(summary: Mapping[str, Any], table: pd.DataFrame, title: str) -> Figure:
    """ROC curves per region (``curves.curve_summary``) with each region's AUC in the legend."""
    figure = Figure(figsize=(5.2, 4.6))
    axes = figure.subplots()
    for region in _regions(summary):
        roc = summary[region]["roc"]
        auc = table.loc[region, "auc"] if region in table.index else float("nan")
        width = 2.6 if region == OVERALL else 1.2
        axes.plot(roc["fpr"], roc["tpr"], linewidth=width, label=f"{region} (AUC {auc:.2f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    axes.legend(fontsize=7, loc="lower right")
    return figure


def confusion_figure(
    tables: Mapping[str, pd.DataFrame], class_names: Sequence[str], threshold: float
) -> Figure:
    """The overall confusion matrix per level (image, study) at ``threshold``."""
    figure = Figure(figsize=(4.6 * len(tables), 4.2), layout="constrained")
    for axes, (level, table) in zip(figure.subplots(1, len(tables)), tables.items(), strict=True):
        row = table.loc[OVERALL]
        counts = np.array([[row["tn"], row["fp"]], [row["fn"], row["tp"]]], dtype=float)
        axes.imshow(counts, cmap="Blues")
        for (i, j), value in np.ndenumerate(counts):
            dark = value > counts.max() / 2
            axes.text(
                j, i, int(value), ha="center", va="center", color="white" if dark else "black"
            )
        axes.set_xticks([0, 1], [f"predicted\n{c}" for c in class_names], fontsize=8)
        axes.set_yticks([0, 1], [f"truly\n{c}" for c in class_names], fontsize=8)
        axes.set_title(f"{level} level, threshold {threshold:.3f}", fontsize=10)
    return figure


def calibration_figure(summaries: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Reliability diagrams (overall) per level: observed rate against mean probability."""
    figure = Figure(figsize=(5.2, 4.6))
    axes = figure.subplots()
    for level, summary in summaries.items():
        overall = summary[OVERALL]
        bins = pd.DataFrame(overall["calibration"])
        used = bins[bins["count"] > 0]
        label = f"{level} (ECE {overall['ece']:.3f}, Brier {overall['brier']:.3f})"
        axes.plot(used["mean_probability"], used["observed_rate"], marker="o", label=label)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        title="Calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axes.legend(fontsize=8, loc="upper left")
    return figure


def choose_cases(predictions: pd.DataFrame, threshold: float, per_kind: int = 2) -> pd.DataFrame:
    """The image rows to show: per outcome, the ``per_kind`` furthest from the threshold
    (the model's most confident mistakes and successes); column ``kind`` says which."""
    labelled = predictions[predictions["label"].isin([0, 1]) & predictions["probability"].notna()]
    kinds = outcome(
        labelled["label"].to_numpy(),
        predicted_labels(labelled["probability"].to_numpy(), threshold),
    )
    chosen = labelled.assign(kind=kinds, distance=(labelled["probability"] - threshold).abs())
    parts = [chosen[chosen["kind"] == kind].nlargest(per_kind, "distance") for kind in CASE_KINDS]
    return pd.concat(parts).drop(columns="distance")


def chosen_cases(run: Run, threshold: float, per_kind: int = 2, engine=None) -> list[Case]:
    """``choose_cases`` as pictures: the model's map over each image where ``engine`` (the
    run's checkpoint) is given, else the plain image; at most ``CASE_SIDE`` px a side."""
    from PIL import Image

    from nextray_core.explain import overlay
    from nextray_core.imaging import read_radiograph

    cases = []
    for _, row in choose_cases(run.predictions, threshold, per_kind).iterrows():
        caption = f"{row['region']} · p = {row['probability']:.3f} · study {row['study_id']}"
        if engine is not None:
            from nextray_core.engine import answer_radiograph

            answer = answer_radiograph(engine, row["image_path"])
            picture = overlay(answer.pixels, answer.cam, opacity=0.4)
        else:
            picture = read_radiograph(row["image_path"], warn=False).to_uint8()
        image = Image.fromarray(picture)
        image.thumbnail((CASE_SIDE, CASE_SIDE))
        cases.append(Case(title=row["kind"], caption=caption, picture=np.asarray(image)))
    return cases


def _table_html(table: pd.DataFrame, level: str) -> str:
    counts = ["count"] if level == "study" else ["count", "studies"]
    count_header = ["Studies"] if level == "study" else ["Images", "Studies"]
    header = ["Region", *count_header, *(name for _, name in TABLE2_METRICS)]
    regions = [r for r in table.index if r != OVERALL] + [OVERALL]
    rows = [
        [
            region,
            *(str(int(table.loc[region, c])) for c in counts),
            *(with_interval(table, region, metric) for metric, _ in TABLE2_METRICS),
        ]
        for region in regions
    ]
    return _rows_html(header, rows)


def _rows_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _trust_html(run: Run) -> str:
    """The run's cached trust scores (``nextray trust``) as two tables, or '' if it has none."""
    from nextray_core.run_trust import read_run_trust, scored_by

    try:
        trust = read_run_trust(run.path)
    except DatasetError as error:
        return f"<h2>Trust in the maps</h2><p class='note'>{html.escape(str(error))}</p>"
    if trust is None:
        return ""
    summary = trust.summary
    parts = [
        "<h2>Trust in the maps</h2>",
        f"<p>Maps: {html.escape(summary['method'])} at {summary['input_size']} px, from "
        "<code>nextray trust</code> (cached in the run).</p>",
    ]
    if not scored_by(trust, run):
        parts.append(
            "<p class='note'>These scores come from weights that did not score the run.</p>"
        )
    local = trust.table("localisation")
    if len(local):
        parts.append(
            "<p>Localisation on the positive images with ground-truth boxes: pointing game (95% "
            "Wilson interval) and energy inside the boxes, beside a uniform map.</p>"
        )
        parts.append(_rows_html(
            ["Region", "Images", "Pointing game", "Uniform", "Energy inside", "Uniform"],
            [[region, int(r["images"]), f"{r['hit_rate']:.3f} ({r['hit_rate_low']:.3f}-"
              f"{r['hit_rate_high']:.3f})", f"{r['uniform']:.3f}",
              f"{r['mean_energy_inside']:.3f}", f"{r['uniform']:.3f}"]
             for region, r in local.iterrows()],
        ))  # fmt: skip
    faith = trust.table("faithfulness")
    if len(faith):
        settings = summary["faithfulness"]
        parts.append(
            f"<p>Faithfulness (removal curves, {html.escape(settings['baseline'])} baseline; 0 = "
            f"a random map) of the map of {html.escape(settings['target'])}, on up to "
            f"{settings['per_region']} images per region; 95% t intervals.</p>"
        )
        parts.append(_rows_html(
            ["Region", "Images", "Faithfulness", "Share above 0"],
            [[region, int(r["images"]), f"{r['mean']:.3f} ({r['low']:.3f}-{r['high']:.3f})",
              f"{r['positive_share']:.2f}"] for region, r in faith.iterrows()],
        ))  # fmt: skip
    return "\n".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:.25em .5em;text-align:right}td:first-child,th:first-child{text-align:left}
.figs img{max-width:49%;vertical-align:top}.cases{display:flex;flex-wrap:wrap;gap:1em}
.case{width:240px;font-size:.85em}.case img{width:240px}.note{color:#a00}"""


def render_html_report(
    run: Run,
    threshold: float,
    *,
    cases: Sequence[Case] = (),
    n_boot: int = 1000,
    seed: int = 0,
    note: str = "",
) -> str:
    """The whole report as one HTML string (see the module docstring)."""
    evaluation = evaluate_predictions(run.predictions, threshold, n_boot=n_boot, seed=seed)
    names = run.class_names
    meta = run.meta
    dataset = meta.get("dataset") or {}
    models = ", ".join(c.get("name", "?") for c in meta.get("checkpoints") or []) or "unknown"
    figures = {
        "ROC, study level": roc_figure(
            evaluation.curves["study"], evaluation.tables["study"], "ROC, study level"
        ),
        "ROC, image level": roc_figure(
            evaluation.curves["image"], evaluation.tables["image"], "ROC, image level"
        ),
        "Confusion matrices": confusion_figure(evaluation.tables, names, threshold),
        "Calibration": calibration_figure(evaluation.curves),
    }
    images = "".join(
        f'<img alt="{html.escape(title)}" src="{data_uri(png_bytes(fig))}">'
        for title, fig in figures.items()
    )
    case_html = "".join(
        f'<div class="case"><img alt="{html.escape(c.title)}" '
        f'src="{data_uri(image_png(c.picture))}"><br><b>{html.escape(c.title)}</b><br>'
        f"{html.escape(c.caption)}</div>"
        for c in cases
    )
    counts = meta.get("counts") or {}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>neXt-Ray report: {html.escape(run.path.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>neXt-Ray evaluation report: {html.escape(run.path.name)}</h1>",
        "<p><b>Research and teaching only; not for clinical use.</b></p>",
        f"<p>Model: {html.escape(models)}. Data: {html.escape(str(dataset.get('kind', '?')))}, "
        f"split {html.escape(str(dataset.get('split', '?')))}; {counts.get('images', '?')} "
        f"images, {counts.get('studies', '?')} studies. Classes: {html.escape(names[0])} / "
        f"{html.escape(names[1])} ({html.escape(names[1])} when probability &ge; "
        f"{threshold:.3f}). Intervals: {int(evaluation.bootstrap['confidence'] * 100)}% from "
        f"{n_boot} bootstrap resamples of studies, stratified by region.</p>",
        f"<p class='note'>{html.escape(note)}</p>" if note else "",
        "<h2>Study level</h2>",
        _table_html(evaluation.tables["study"], "study"),
        "<h2>Image level</h2>",
        _table_html(evaluation.tables["image"], "image"),
        f"<h2>Figures</h2><div class='figs'>{images}</div>",
        _trust_html(run),
    ]
    if case_html:
        parts.append(
            "<h2>Chosen cases</h2><p>Per outcome, the images furthest from the threshold, with "
            f"the model's map.</p><div class='cases'>{case_html}</div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
