"""neXt-Ray dashboard entry point (Streamlit). A thin layer over nextray_core.

The pages (predict, metrics, errors, teaching, model) arrive with the dashboard issue; until a
trained model ships, the app says so instead of failing.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from nextray_core.checkpoint import read_card
from nextray_core.errors import NextRayError

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"

st.set_page_config(page_title="neXt-Ray", layout="wide")
st.title("neXt-Ray")
st.caption(
    "Abnormality detection in upper-extremity radiographs. Research and teaching only; "
    "not for clinical use."
)
try:
    card = read_card(DEMO_CHECKPOINT)
except NextRayError:
    st.info(
        "No model yet: this version ships no trained checkpoint. The demo model (a ResNet-152 "
        "trained on FracAtlas) and the dashboard pages arrive in later releases."
    )
else:
    st.success(f"Checkpoint: {card.name} ({card.architecture}, input {card.prep.size}px)")
