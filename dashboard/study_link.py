"""Opening a study in the Study viewer from any page (Errors, Teaching, Label review, Run map).

The study to show travels in ``st.session_state[STUDY]`` and, so that a link can be shared or
bookmarked, in the ``study`` query parameter; the viewer reads either.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

STUDY = "study_open"
VIEWER = Path(__file__).parent / "views" / "study.py"


def open_study(study_id: str) -> None:
    """Switch to the Study viewer showing ``study_id`` (call from the page body, not a callback:
    Streamlit ignores a page switch made inside a callback)."""
    st.session_state[STUDY] = str(study_id)
    st.query_params["study"] = str(study_id)
    st.switch_page(VIEWER)


def current_study() -> str | None:
    """The study the viewer should show: the session's choice, else the query parameter."""
    chosen = st.session_state.get(STUDY)
    return chosen if chosen else st.query_params.get("study")


def open_button(study_id: str, key: str, where=st, label: str = "Open in the Study viewer") -> None:
    """A button that opens ``study_id`` in the viewer."""
    if where.button(label, key=key, icon=":material/open_in_new:", width="stretch"):
        open_study(study_id)
