"""Metrics: per-region confusion matrices, ROC/PR curves, Table 2, kappa and calibration."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import figures, figures_png, state
from nextray_core import curves, reference
from nextray_core.index import MURA_REGIONS
from nextray_core.metrics import OVERALL

PRESET_LABELS = {
    "0.5": "0.5",
    "youden": "Youden",
    "sensitivity>=0.90": "sens ≥ 0.90",
    "specificity>=0.90": "spec ≥ 0.90",
    "max_kappa": "max kappa",
}

st.title("Metrics")
run = state.require_run()

dataset = run.meta.get("dataset", {})
st.caption(
    f"Run **{state.short(str(run.path))}** · {dataset.get('kind', '?')} / "
    f"{dataset.get('split', '?')} · {len(run.predictions)} images, "
    f"{run.predictions['study_id'].nunique()} studies · checkpoint "
    + ", ".join(c.get("name", "?") for c in run.meta.get("checkpoints", []))
)
top = st.columns([1.2, 2])
level = top[0].radio(
    "Level",
    state.LEVELS,
    format_func=lambda v: f"{v} level",
    horizontal=True,
    key="metrics_level",
    help="Study level: a study's probability is the mean of its views (the MURA convention).",
)
others = [p for p in state.run_choices() if p != str(run.path)]
compare_path = top[1].selectbox(
    "Compare with a second run", [None, *others], format_func=state.short, key="metrics_compare"
)
second = state.get_run(compare_path) if compare_path else None

negative, positive = run.class_names
rows = state.run_rows(run, level)
labelled = rows[rows["label"].isin([0, 1])]
if labelled["label"].nunique() < 2:
    st.warning(f"This run needs labelled {negative} AND {positive} cases for metrics.")
    st.stop()

# The honest threshold: the card's, chosen on the validation split by the release step. The
# presets are fitted on this run's own labels, so the metrics they give are optimistic.
honest = state.default_threshold()
source = state.threshold_source(state.get_card()) if state.run_is_paired() else None
split = dataset.get("split", "?")
st.write("**Threshold**: the model's own, or a preset (or click a point on the ROC curve):")
st.caption(
    f"Model card: {honest:.3f}, "
    + (f"chosen by {source}" if source else "how it was chosen is not recorded")
    + f". The presets are fitted on this run's own '{split}' split at {level} level: they have "
    "seen the labels they are scored on, so the metrics they give are optimistic."
)
presets = curves.threshold_presets(labelled["label"].to_numpy(), labelled["probability"])
choices = {"card": honest, **presets}
for column, (name, value) in zip(st.columns(len(choices)), choices.items(), strict=True):
    fitted = name not in ("card", "0.5")  # 0.5 is a fixed value, fitted on nothing
    label = "model card" if name == "card" else PRESET_LABELS[name] + (f" ({split})" * fitted)
    column.button(
        f"{label} · {value:.3f}" if np.isfinite(value) else label,
        key=f"preset_{name}",
        disabled=not np.isfinite(value),
        on_click=state.set_threshold,
        args=(value,),
        help=f"fitted on this run's '{split}' split (optimistic here)"
        if fitted
        else ("the model card's threshold" if name == "card" else "a fixed value"),
        width="stretch",
    )
threshold = state.threshold()
table = state.run_metrics(run, level, threshold)
second_table = state.run_metrics(second, level, threshold) if second is not None else None
st.markdown(f"Current threshold **{threshold:.3f}** ({positive} if probability ≥ threshold).")

# Curves for one region (or overall), both runs overlaid.
regions = [OVERALL, *sorted(labelled["region"].unique())]
region = st.selectbox("Curves and calibration for", regions, key="metrics_region")


def _subset(frame):
    frame = frame[frame["label"].isin([0, 1])]
    return frame if region == OVERALL else frame[frame["region"] == region]


def _curve_set(name, frame, metrics_table):
    sub = _subset(frame)
    labels, scores = sub["label"].to_numpy(), sub["probability"].to_numpy()
    row = metrics_table.loc[region] if region in metrics_table.index else None
    roc_point = (1 - row["specificity"], row["sensitivity"]) if row is not None else (np.nan,) * 2
    pr_point = (row["sensitivity"], row["precision"]) if row is not None else (np.nan,) * 2
    roc = figures.Curve(name, curves.roc_points(labels, scores), roc_point)
    pr = figures.Curve(name, curves.pr_points(labels, scores), pr_point)
    bins = (
        name,
        curves.reliability_table(labels, scores),
        curves.expected_calibration_error(labels, scores),
    )
    return roc, pr, bins, labels


runs = [(state.short(str(run.path)), rows, table)]
if second is not None:
    label = state.short(str(second.path))
    label = str(second.path) if label == runs[0][0] else label
    runs.append((label, state.run_rows(second, level), second_table))
sets = [_curve_set(*item) for item in runs]


def _clicked_roc() -> None:
    value = figures.threshold_from_selection(st.session_state.get("roc_chart"))
    if value is not None:
        state.set_threshold(value)


roc_fig = figures.roc_figure([s[0] for s in sets], f"ROC · {region} · {level} level")
pr_fig = figures.pr_figure(
    [s[1] for s in sets], f"Precision-recall · {region}", float(np.mean(sets[0][3]))
)
left, right = st.columns(2)
left.plotly_chart(
    roc_fig, key="roc_chart", on_select=_clicked_roc, selection_mode="points", theme=None
)
right.plotly_chart(pr_fig, key="pr_chart", theme=None)

st.subheader("Confusion matrices per region")
st.caption("Rows: truth. Columns: prediction at the current threshold.")
st.plotly_chart(figures.confusion_figure(table, run.class_names), key="confusion_chart", theme=None)

st.subheader("Table 2: metrics per region (95% study-bootstrap intervals)")
st.caption(
    f"{state.N_BOOT} bootstrap resamples of whole studies, stratified by region. "
    f"count = rows at this level; abnormal = rows labelled {positive}."
)
st.table(figures.table2_compared([(name, t) for name, _, t in runs]))
for column, (name, _, metrics_table) in zip(st.columns(4), runs, strict=False):
    column.download_button(
        f"Table (CSV): {name}",
        metrics_table.to_csv().encode("utf-8"),
        file_name=f"metrics_{level}_t{threshold:.3f}.csv",
        mime="text/csv",
        key=f"csv_{name}",
        on_click="ignore",
    )
with st.expander("Counts and raw numbers (as computed by nextray_core.metrics.metric_table)"):
    st.dataframe(table, width="stretch")

st.subheader("Cohen's kappa by region")
# Published MURA marks only beside MURA runs: on other data they compare different tasks.
is_mura = dataset.get("kind") == "mura"
mura = [r for r in table.index if r in MURA_REGIONS or r == OVERALL] if is_mura else []
references = reference.published_kappa()
measured_on = {key: "hidden MURA test set" for key in reference.KAPPA_COLUMNS}
measured_on["nextray_seed_resnet152"] = "report's 640-image split"
kappa_args = (
    [(name, t) for name, _, t in runs],
    references.loc[[r for r in references.index if r in mura]],
    {key: f"{label} — {measured_on[key]}" for key, label in reference.KAPPA_COLUMNS.items()},
)
kappa_fig = figures.kappa_figure(*kappa_args)
st.plotly_chart(kappa_fig, key="kappa_chart", theme=None)
if len(mura) > 1:
    st.caption(
        "Reference marks (MURA regions only): "
        f"radiologists and Stanford — {reference.SOURCES['mura']}; neXt-Ray ResNet-152 — "
        f"{reference.SOURCES['seed']}. " + " ".join(reference.CAVEATS[:1])
    )
elif is_mura:
    st.caption("No MURA region in this run: the published MURA kappas are not shown.")
else:
    st.caption(
        f"The published MURA kappas (radiologists, Stanford) are shown for MURA runs only; this "
        f"run is on {dataset.get('kind', 'another dataset')}, a different task."
    )

st.subheader("Reliability diagram")
reliability_fig = figures.reliability_figure([s[2] for s in sets])
st.plotly_chart(reliability_fig, key="reliability_chart", theme=None)

st.subheader("Downloads")
st.caption("Each figure as a PNG (drawn offline by matplotlib), at the current threshold.")
prevalence = float(np.mean(sets[0][3]))
downloads = {
    "roc": lambda: figures_png.roc_png([s[0] for s in sets], f"ROC · {region} · {level} level"),
    "pr": lambda: figures_png.pr_png([s[1] for s in sets], f"Precision-recall · {region}",
                                     prevalence),
    "confusion": lambda: figures_png.confusion_png(table, run.class_names),
    "kappa": lambda: figures_png.kappa_png(*kappa_args),
    "reliability": lambda: figures_png.reliability_png([s[2] for s in sets]),
}  # fmt: skip
for column, (stem, data) in zip(st.columns(5), downloads.items(), strict=True):
    column.download_button(f"{stem} (png)", data, f"{stem}_{level}.png", "image/png",
                           key=f"dl_{stem}", on_click="ignore")  # fmt: skip
