"""Trust: how far this run's maps can be trusted, per region: localisation and faithfulness.

The scores are the core's (``nextray_core.run_trust``), cached in the run as trust.json and
trust_images.csv by ``nextray trust RUN`` or by the button at the bottom of this page. This page
only lays them out: per-region bars with 95% intervals beside a uniform map's scores, the
per-image table (select a row to open its study), and the files to download.
"""

from __future__ import annotations

import streamlit as st

from dashboard import figures, state
from dashboard.study_link import open_button
from nextray_core.errors import NextRayError
from nextray_core.explain import METHODS
from nextray_core.run_trust import (
    TRUST_FILE,
    TRUST_IMAGES_FILE,
    compute_run_trust,
    read_run_trust,
    scored_by,
    write_run_trust,
)
from nextray_core.viewer import run_boxes

st.title("Trust in the maps")
run = state.require_run()
st.caption(
    "Does the map point at the finding (localisation, where the data has boxes) and does the "
    "model's answer depend on what the map marks (faithfulness)? Computed by the core on this "
    "run's images with the checkpoint that scored it, and kept in the run."
)


@st.cache_data(show_spinner=False, max_entries=16)
def _trust(path: str, stamp: float):
    return read_run_trust(path)


trust_path = run.path / TRUST_FILE
stamp = trust_path.stat().st_mtime if trust_path.exists() else 0.0
try:
    trust = _trust(str(run.path), stamp)
except NextRayError as error:
    st.error(str(error))
    trust = None


def compute_section(expanded: bool) -> None:
    """Compute (or recompute) the scores with the session's checkpoint and save them in the run."""
    with st.expander("Compute the trust scores here", expanded=expanded):
        model = state.get_model()
        if model is None:
            st.caption("Select the checkpoint that scored this run in the sidebar first.")
            return
        if not state.run_is_scored_by(model.card):
            st.warning("The selected checkpoint did not score this run; its maps would not be "
                       "the run's. Select the run's own checkpoint.")  # fmt: skip
            return
        columns = st.columns(3)
        default = METHODS.index(model.card.extra.get("map_method", "cam"))
        method = columns[0].selectbox("Map method", METHODS, index=default, key="trust_method")
        per_region = columns[1].number_input(
            "Faithfulness images per region", 0, 200, 20, key="trust_per_region",
            help="Each costs about ten forward passes; 0 scores localisation only.",
        )  # fmt: skip
        columns[2].caption(f"Writes {TRUST_FILE} and {TRUST_IMAGES_FILE} into the run folder.")
        if not st.button("Compute and save", key="trust_compute", type="primary"):
            return
        bar = st.progress(0.0, text="scoring the maps…")
        boxes, source = run_boxes(run.path, run.meta)
        try:
            scores = compute_run_trust(
                model.engine, run, boxes, method=method, per_region=int(per_region),
                boxes_source=source,
                progress=lambda done, total, part: bar.progress(
                    done / max(total, 1), text=f"{part}: {done} / {total} images"
                ),
            )  # fmt: skip
            write_run_trust(run.path, scores)
        except (NextRayError, OSError) as error:
            st.error(f"Could not compute the trust scores: {error}")
            return
        _trust.clear()
        st.rerun()


if trust is None:
    st.info(
        f"This run has no trust scores yet. `nextray trust {state.short(str(run.path))}` "
        "computes them (localisation on every positive image with boxes, faithfulness on a "
        "sample per region), or compute them below."
    )
    compute_section(expanded=True)
    st.stop()

summary = trust.summary
checkpoint = summary.get("checkpoint", {})
st.caption(
    f"Maps: **{summary['method']}** at {summary['input_size']} px · checkpoint "
    f"{checkpoint.get('name', '?')} · computed {summary.get('created', '?')}"
)
if skipped := summary.get("unreadable_images"):
    st.warning(f"{len(skipped)} image(s) could not be read and were left out, e.g. {skipped[0]}")
if not scored_by(trust, run):
    st.warning(
        "These scores come from a checkpoint that did not score this run (its weights differ "
        "from run.json's). Recompute them below with the run's checkpoint."
    )

st.header("Localisation")
local = trust.table("localisation")
source = summary["localisation"].get("boxes_source") or "the run's dataset"
if local.empty:
    st.info(f"No positive image of this run has ground-truth boxes ({source}); localisation "
            "needs them (FracAtlas has them, MURA does not).")  # fmt: skip
else:
    st.caption(
        "Pointing game: the map's peak lies inside a box. Energy: the share of the map's "
        "positive mass inside the boxes. The dash is a uniform map on the same images (its "
        "energy is the boxes' area share, also the chance that a random peak lands in a box). "
        f"Boxes: {source}. Bars: 95% Wilson intervals."
    )
    columns = st.columns(2)
    hit = figures.interval_bars(
        local, "hit_rate", "hit_rate_low", "hit_rate_high", title="Pointing game",
        axis="share of images", baseline="uniform", baseline_name="uniform map",
    )  # fmt: skip
    columns[0].plotly_chart(hit, key="trust_hit")
    columns[1].plotly_chart(
        figures.interval_bars(
            local, "mean_energy_inside", title="Energy inside the boxes",
            axis="mean share of the map", baseline="uniform", baseline_name="uniform map",
        ),
        key="trust_energy",
    )  # fmt: skip
    st.dataframe(local.round(3), key="trust_local_table")

st.header("Faithfulness")
faith = trust.table("faithfulness")
settings = summary["faithfulness"]
if faith.empty:
    st.info("Faithfulness was not scored for this run (0 images per region).")
else:
    st.caption(
        f"Removal curves: the model's probability for {settings['target']} when the pixels the "
        "map ranks LEAST relevant are replaced, minus when the MOST relevant are "
        f"({settings['baseline']} baseline, fractions {settings['fractions']}), averaged. "
        f"0 = no better than a random map, 1 = the map finds everything that matters. Up to "
        f"{settings['per_region']} images per region (seed {settings['seed']}); bars: 95% t "
        "intervals."
    )
    st.plotly_chart(
        figures.interval_bars(
            faith, "mean", "low", "high", title="Faithfulness", axis="score (-1 to 1)",
            zero_line=True,
        ),
        key="trust_faith",
    )  # fmt: skip
    st.dataframe(faith.round(3), key="trust_faith_table")

st.header("Images")
images = trust.images
st.caption("Every scored image: lowest faithfulness first, then the boxed images by energy inside.")
images = images.sort_values(["faithfulness", "energy_inside"], na_position="last")
st.dataframe(images.drop(columns=["image_path"]).round(3), key="trust_images", hide_index=True)
pick = st.columns([3, 1])
study = pick[0].selectbox("Study to open", images["study_id"].unique(), key="trust_study")
open_button(str(study), key="trust_open", where=pick[1])

columns = st.columns(2)
columns[0].download_button(
    f"Download {TRUST_FILE}", trust_path.read_bytes(), TRUST_FILE, "application/json",
    key="trust_download_json",
)  # fmt: skip
columns[1].download_button(
    f"Download {TRUST_IMAGES_FILE}", images.to_csv(index=False), TRUST_IMAGES_FILE, "text/csv",
    key="trust_download_csv",
)  # fmt: skip
compute_section(expanded=False)
