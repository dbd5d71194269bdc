"""Report: the run's self-contained HTML report (as ``nextray report`` writes it) and its
figures as PNG files, at the sidebar's threshold. All drawing is the core's
(``nextray_core.html_report``: matplotlib, no browser needed)."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from nextray_core.html_report import (
    calibration_figure,
    chosen_cases,
    confusion_figure,
    png_bytes,
    render_html_report,
    roc_figure,
)
from nextray_core.runs import evaluate_predictions

st.title("Report")
run = state.require_run()
threshold = state.threshold()
st.caption(
    f"At threshold **{threshold:.3f}** (sidebar). The HTML file holds everything (figures as "
    "embedded PNGs, no scripts, no links): it opens offline and can be mailed or printed. "
    f"The same file from the command line: `nextray report {state.short(str(run.path))} "
    f"--threshold {threshold:.3f} --out report.html`."
)
controls = st.columns(3)
n_boot = controls[0].select_slider("Bootstrap resamples", [0, 200, 1000], 200, key="rep_boot")
per_kind = controls[1].number_input("Cases per outcome", 0, 6, 2, key="rep_cases")
model = state.get_model()
maps = controls[2].toggle("Maps on the cases", value=model is not None, key="rep_maps")
stamp = run.path.joinpath("predictions.csv").stat().st_mtime


@st.cache_data(show_spinner="Computing metrics and curves…", max_entries=8)
def _figures(path: str, stamp: float, threshold: float) -> dict[str, bytes]:
    evaluation = evaluate_predictions(run.predictions, threshold, n_boot=0)
    tables, curves = evaluation.tables, evaluation.curves
    return {
        "roc-study": png_bytes(roc_figure(curves["study"], tables["study"], "ROC, study level")),
        "roc-image": png_bytes(roc_figure(curves["image"], tables["image"], "ROC, image level")),
        "confusion": png_bytes(confusion_figure(tables, run.class_names, threshold)),
        "calibration": png_bytes(calibration_figure(curves)),
    }


@st.cache_data(show_spinner="Writing the report (maps for the chosen cases)…", max_entries=4)
def _report(path: str, stamp: float, threshold: float, n_boot: int, per_kind: int, maps: str):
    engine = state.get_model(maps).engine if maps else None
    cases = chosen_cases(run, threshold, per_kind, engine) if per_kind else []
    return render_html_report(run, threshold, cases=cases, n_boot=n_boot)


figures = _figures(str(run.path), stamp, threshold)
for column, (name, png) in zip(st.columns(2) * 2, figures.items(), strict=True):
    column.image(png, width="stretch")
    column.download_button(
        f"Download {name}.png", png, file_name=f"{name}.png", mime="image/png", key=f"rep_{name}"
    )

checkpoint = st.session_state.get(state.CHECKPOINT) if maps and model is not None else ""
if st.toggle("Build the HTML report", key="rep_build"):
    text = _report(str(run.path), stamp, threshold, int(n_boot), int(per_kind), checkpoint or "")
    st.download_button(
        f"Download the report ({len(text) / 1e6:.1f} MB)",
        text,
        file_name=f"{run.path.name}-report.html",
        mime="text/html",
        key="rep_download",
    )
