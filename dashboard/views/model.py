"""Model card: what the checkpoint is, how it was trained, how well it did, what it is for."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, state
from nextray_core.metrics import table_from_dict

st.title("Model card")
path = st.session_state.get(state.CHECKPOINT)
card = state.get_card(path)
if card is None:
    state.no_model_message()
    st.stop()

st.header(card.name)
st.warning(
    f"**Intended use:** {card.intended_use}. neXt-Ray is a research and teaching tool; its "
    "outputs must not inform the diagnosis or treatment of any patient.",
    icon=":material/info:",
)
st.markdown(f"**Task:** {card.task} · positive class: **{card.positive_class}**")

st.subheader("Architecture and input")
prep = card.prep
st.table(
    pd.DataFrame(
        {
            "value": [
                card.architecture,
                f"{prep.size} x {prep.size}, grayscale repeated to 3 channels",
                f"mean {list(prep.mean)}, std {list(prep.std)}",
                f"{card.dropout}",
                f"{card.default_threshold:.3f}",
                f"{card.weights_dtype}, sha256 {card.weights_sha256[:16]}…",
                card.created or "unknown",
                state.short(path),
            ]
        },
        index=[
            "architecture",
            "input",
            "normalisation",
            "dropout",
            "default threshold",
            "weights",
            "created",
            "folder",
        ],
    )
)


def _mapping(title: str, values: dict) -> None:
    """A flat dict as a two-column table; nested values as JSON."""
    st.subheader(title)
    if not values:
        st.caption("Not recorded in the card.")
        return
    flat = {k: v for k, v in values.items() if not isinstance(v, dict | list)}
    if flat:
        st.table(pd.DataFrame({"value": [str(v) for v in flat.values()]}, index=list(flat)))
    nested = {k: v for k, v in values.items() if isinstance(v, dict | list)}
    if nested:
        st.json(nested, expanded=False)


_mapping("Training recipe", card.training)
_mapping("Data", card.data)

st.subheader("Metrics")
if not card.metrics:
    st.caption("No metrics recorded in the card; see a run's Metrics page.")
for name, values in card.metrics.items():
    is_table = (
        isinstance(values, dict)
        and values
        and all(isinstance(v, dict) and "kappa" in v for v in values.values())
    )
    if is_table:  # a metric table as written by metrics.table_to_dict: show it as Table 2
        st.markdown(f"**{name}** (95% study-bootstrap intervals)")
        st.dataframe(figures.table2(table_from_dict(values)), width="stretch")
    elif isinstance(values, dict):
        st.markdown(f"**{name}**")
        st.json(values, expanded=True)
    else:
        st.markdown(f"**{name}:** {values}")

if card.extra.get("ood"):
    _mapping("Out-of-distribution check", card.extra["ood"])

loaded = state.get_model(path)
if loaded is not None:
    st.subheader("Inference on this machine")
    st.caption(
        "The fastest path whose answers match the fp32 model on the checkpoint's own "
        "calibration radiographs (largest probability change <= 0.01, AUC change <= 0.002, "
        "every map's correlation >= 0.95); otherwise fp32 PyTorch."
    )
    st.code(loaded.engine.describe(), language=None)

st.subheader("Licences and attribution")
licence = card.licence or {}
if licence:
    for key, text in licence.items():
        st.markdown(f"- **{key}:** {text}")
st.markdown(
    "- **code:** neXt-Ray, Apache-2.0.\n"
    "- **FracAtlas** (demo model data and sample images): Abedeen, Rahman, Prottyasha, Ahmed, "
    'Chowdhury and Shatabda, "FracAtlas: A Dataset for Fracture Classification, Localization '
    'and Segmentation of Musculoskeletal Radiographs", *Scientific Data* 10, 521 (2023), '
    "https://doi.org/10.1038/s41597-023-02432-4; CC BY 4.0 — keep this attribution with every "
    "copy.\n"
    "- **MURA:** Stanford research-use agreement; no part of MURA is shipped with neXt-Ray."
)
