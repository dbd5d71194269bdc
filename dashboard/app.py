"""neXt-Ray dashboard: the router and the sidebar (run, checkpoint, the one shared threshold).

Start it with ``nextray dashboard [--run RUN] [--checkpoint CKPT]`` or
``streamlit run dashboard/app.py -- --run RUN --checkpoint CKPT`` (from any folder: the
script-level ``dashboard/.streamlit/config.toml`` keeps it on this machine, and safety.py
refuses to serve if a flag or variable overrode that). ``nextray_core`` and this package must be
importable (``pip install .`` or ``pip install -e .``). Every page is a thin script over
nextray_core; what they share lives in dashboard/state.py.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import safety, state

# Not "pages/": beside the entry script that name switches on Streamlit's older folder-based
# multipage mode, in which AppTest runs a page without app.py (no sidebar, no session setup).
# Absolute: st.Page resolves a relative path against the entry script's folder, not the cwd.
PAGES = Path(__file__).resolve().parent / "views"


def _open(kind: str) -> None:
    """Callback of the 'open another folder' boxes: check the folder, then select it."""
    text = st.session_state.get(f"{kind}_other", "").strip()
    st.session_state[f"{kind}_other_error"] = None
    if not text:
        return
    path = str(Path(text).expanduser().resolve())
    if kind == "run":
        problem = state.run_error(path)
    else:
        problem = None if state.get_card(path) else f"{path} is not a neXt-Ray checkpoint folder"
    if problem:
        st.session_state[f"{kind}_other_error"] = problem
        return
    known = "known_runs" if kind == "run" else "known_checkpoints"
    st.session_state[known] = [*st.session_state.get(known, []), path]
    st.session_state[state.RUN if kind == "run" else state.CHECKPOINT] = path
    st.session_state[f"{kind}_other"] = ""
    if kind == "run":
        state.follow_run()


def _picker(kind: str, label: str, key: str, choices: list[str], on_change=None) -> None:
    current = st.session_state.get(key)
    options = list(dict.fromkeys([*choices, *([current] if current else [])]))
    if options:
        st.selectbox(
            label, options, key=key, format_func=state.short, help=current, on_change=on_change
        )
    else:
        st.caption(f"{label}: none yet")
    st.text_input(
        f"Open another {kind} folder",
        key=f"{kind}_other",
        on_change=_open,
        args=(kind,),
        placeholder="/path/to/folder",
    )
    if st.session_state.get(f"{kind}_other_error"):
        st.error(st.session_state[f"{kind}_other_error"])


def sidebar() -> None:
    with st.sidebar:
        st.caption("Research and teaching tool. **Not for clinical use.**")
        # a run brings the checkpoint that scored it and that checkpoint's threshold
        _picker("run", "Evaluation run", state.RUN, state.run_choices(), state.follow_run)
        _picker("checkpoint", "Checkpoint", state.CHECKPOINT, state.checkpoint_choices())
        note = state.pairing_note()
        if note is not None:
            paired, text = note
            (st.caption if paired else st.warning)(text)
        st.slider(
            f"Threshold: {state.class_names()[1]} if probability ≥",
            min_value=0.0,
            max_value=1.0,
            step=0.001,
            format="%.3f",
            key=state.THRESHOLD,
            help="One threshold for every page. The Metrics page offers presets and lets you "
            "click the ROC curve to set it.",
        )


st.set_page_config(page_title="neXt-Ray", page_icon=":material/radiology:", layout="wide")
safety.stop_if_unsafe()
state.init_session()
sidebar()
navigation = st.navigation(
    [
        st.Page(PAGES / "predict.py", title="Predict", icon=":material/upload_file:", default=True),
        st.Page(PAGES / "metrics.py", title="Metrics", icon=":material/monitoring:"),
        st.Page(PAGES / "errors.py", title="Errors", icon=":material/error:"),
        st.Page(PAGES / "label_review.py", title="Label review", icon=":material/rule:"),
        st.Page(PAGES / "study.py", title="Study viewer", icon=":material/radiology:"),
        st.Page(PAGES / "run_map.py", title="Run map", icon=":material/scatter_plot:"),
        st.Page(PAGES / "trust.py", title="Trust", icon=":material/verified:"),
        st.Page(PAGES / "report.py", title="Report", icon=":material/summarize:"),
        st.Page(PAGES / "teaching.py", title="Teaching", icon=":material/school:"),
        st.Page(PAGES / "model.py", title="Model card", icon=":material/description:"),
    ]
)
navigation.run()
