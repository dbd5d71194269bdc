"""What every page shares: the chosen run and checkpoint, the one threshold, cached loading.

Models are loaded once per process as inference engines (``st.cache_resource``: one engine
shared by every session; its backends are thread-safe) and runs once per run folder and version
(``st.cache_data``). The run and checkpoint given on the command line
(``streamlit run dashboard/app.py -- --run R --checkpoint C``, as ``nextray dashboard`` passes
them) or else the bundled demo are the session's defaults; the sidebar switches between them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from nextray_core.checkpoint import ModelCard, read_card
from nextray_core.engine import InferenceEngine, load_engine
from nextray_core.errors import NextRayError
from nextray_core.metrics import metric_table, study_table
from nextray_core.ood import OodModel
from nextray_core.runs import Run, is_run, read_run


def _clone_root() -> Path:
    """Where the shipped weights are: beside the package (a clone, or an editable install),
    else the working folder if it is a clone (``pip install .`` and started from the clone)."""
    beside = Path(__file__).resolve().parents[1]
    if (beside / "checkpoints").is_dir():
        return beside
    here = Path.cwd()
    return here if (here / "checkpoints" / "demo" / "card.json").is_file() else beside


REPO = _clone_root()
CHECKPOINTS = REPO / "checkpoints"
DEMO_CHECKPOINT = CHECKPOINTS / "demo"
DEMO_RUN = DEMO_CHECKPOINT / "run"
RUNS_FOLDER = REPO / "runs"  # where users usually write runs (git-ignored)
LEVELS = ("image", "study")
N_BOOT = 1000

RUN, CHECKPOINT, THRESHOLD = "run_path", "checkpoint_path", "threshold"


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint in memory: its inference engine (fp32 model, fast backend, card, OOD)."""

    path: str
    engine: InferenceEngine

    @property
    def card(self) -> ModelCard:
        return self.engine.card

    @property
    def ood(self) -> OodModel | None:
        return self.engine.ood

    @property
    def ood_error(self) -> str:
        return self.engine.ood_error


def command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """``--run`` and ``--checkpoint`` from the arguments after ``--`` (others are ignored)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run")
    parser.add_argument("--checkpoint")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def _existing(path: str | Path | None) -> str | None:
    return str(Path(path).resolve()) if path and Path(path).exists() else None


def init_session() -> None:
    """Session defaults: command line first, then the demo; the threshold from the run/card."""
    args = command_line()
    state = st.session_state
    if RUN not in state:
        state[RUN] = _existing(args.run) or (str(DEMO_RUN) if is_run(DEMO_RUN) else None)
    if CHECKPOINT not in state:
        given = _existing(args.checkpoint)
        demo = str(DEMO_CHECKPOINT) if (DEMO_CHECKPOINT / "card.json").is_file() else None
        # a run's maps must come from the model that scored it: the demo only for its own run
        state[CHECKPOINT] = given or (_run_checkpoint(state[RUN], demo) if state[RUN] else demo)
    state.setdefault("known_runs", [p for p in (state[RUN],) if p])
    state.setdefault("known_checkpoints", [p for p in (state[CHECKPOINT],) if p])
    if THRESHOLD not in state:
        state[THRESHOLD] = _default_threshold(state[RUN], state[CHECKPOINT])


def _run_checkpoint(run_path: str, *candidates: str | None) -> str | None:
    """The checkpoint that scored the run (same weights' SHA-256): one of ``candidates`` (the
    ones this session knows, the demo), else where run.json says it was; None if none is here.
    """
    wanted = _scorers(run_path)
    entries = (get_run(run_path).meta.get("checkpoints") or []) if wanted else []
    for path in [*candidates, *(entry.get("path") for entry in entries)]:
        card = get_card(path) if path and (Path(path) / "card.json").is_file() else None
        if card is not None and card.weights_sha256 in wanted:
            return str(Path(path).resolve())
    return None


def _scorers(run_path: str | None) -> dict[str, str]:
    """{weights SHA-256: checkpoint name} of the checkpoints that scored the run."""
    run = get_run(run_path) if run_path else None
    return run.scorers if run else {}


def _default_threshold(run_path: str | None, checkpoint_path: str | None) -> float:
    """The card's threshold when that checkpoint alone scored the run, else the run's own
    (an ensemble's), else the card's, else 0.5."""
    run, card = get_run(run_path), get_card(checkpoint_path)
    scorers = _scorers(run_path)
    if card is not None and len(scorers) == 1 and card.weights_sha256 in scorers:
        return float(card.default_threshold)
    if run is not None and "default_threshold" in run.meta:
        return float(run.default_threshold)
    return float(card.default_threshold) if card else 0.5


def run_is_scored_by(card: ModelCard) -> bool:
    """Whether ``card``'s weights scored the session's run (so its maps are the run's)."""
    return card.weights_sha256 in _scorers(st.session_state.get(RUN))


def follow_run() -> None:
    """Callback of a run change: serve the run with the checkpoint that scored it and that
    checkpoint's threshold. When that checkpoint is not here, the current one stays and the
    sidebar says so (``pairing_note``)."""
    state = st.session_state
    run_path = state.get(RUN)
    if not run_path:
        return
    match = _run_checkpoint(run_path, *checkpoint_choices())
    if match:
        state[CHECKPOINT] = match
        state["known_checkpoints"] = list(
            dict.fromkeys([*state.get("known_checkpoints", []), match])
        )
    state[THRESHOLD] = _default_threshold(run_path, state.get(CHECKPOINT))


def default_threshold() -> float:
    """The session's honest threshold: the scoring checkpoint's card's (see _default_threshold)."""
    return _default_threshold(st.session_state.get(RUN), st.session_state.get(CHECKPOINT))


def run_is_paired() -> bool:
    """Whether the session's checkpoint is one that scored the session's run."""
    note = pairing_note()
    return note is not None and note[0]


def pairing_note() -> tuple[bool, str] | None:
    """(paired, what to say) about the session's run and checkpoint; None without both."""
    run_path, card = st.session_state.get(RUN), get_card()
    scorers = _scorers(run_path)
    if card is None or not scorers:
        return None
    if card.weights_sha256 in scorers:
        return True, f"Model **{card.name}** scored this run."
    missing = _run_checkpoint(run_path, *checkpoint_choices()) is None
    why = "its own checkpoint is not on this machine" if missing else "chosen in the sidebar"
    return False, (
        f"This run was scored by **{', '.join(scorers.values())}**; the model shown is "
        f"**{card.name}** ({why}): its maps on Errors and Teaching are not the maps of the "
        "model that scored the run."
    )


def threshold_source(card: ModelCard | None) -> str | None:
    """How the card's default threshold was chosen, as the card records it (None if it does not)."""
    if card is None:
        return None
    release = card.extra.get("release") or {}
    return release.get("threshold") or card.training.get("threshold")


def run_choices() -> list[str]:
    """Runs this session knows of, plus the demo and any under ./runs and checkpoints/*/run."""
    found = [str(DEMO_RUN)] if is_run(DEMO_RUN) else []
    for parent in (RUNS_FOLDER, CHECKPOINTS):
        if parent.is_dir():
            found += [str(p) for p in sorted(parent.glob("*")) if is_run(p)]
            found += [str(p) for p in sorted(parent.glob("*/run")) if is_run(p)]
    return list(dict.fromkeys([*st.session_state.get("known_runs", []), *found]))


def checkpoint_choices() -> list[str]:
    found = [str(p.parent) for p in sorted(CHECKPOINTS.glob("*/card.json"))]
    return list(dict.fromkeys([*st.session_state.get("known_checkpoints", []), *found]))


def short(path: str | None) -> str:
    """A path as shown in pickers and legends: relative to the repository when inside it, else
    its last two parts (the full path is in the picker's help)."""
    if not path:
        return "none"
    try:
        return str(Path(path).relative_to(REPO))
    except ValueError:
        parts = Path(path).parts
        return str(Path(*parts[-2:])) if len(parts) > 2 else str(path)


def _stamp(path: Path, *names: str) -> tuple[float, ...]:
    """Modification times: a re-written run or checkpoint is read again, not served stale."""
    return tuple((path / n).stat().st_mtime if (path / n).exists() else 0.0 for n in names)


@st.cache_data(show_spinner=False, max_entries=16)
def _read_run(path: str, stamp: tuple[float, ...]) -> Run:
    return read_run(path)


def get_run(path: str | None = None) -> Run | None:
    """The run at ``path`` (default: the session's), or None if there is none or it is broken."""
    path = path if path is not None else st.session_state.get(RUN)
    if not path:
        return None
    try:
        return _read_run(path, _stamp(Path(path), "run.json", "predictions.csv"))
    except (NextRayError, OSError):
        return None


def run_error(path: str | None) -> str | None:
    """Why the run at ``path`` cannot be read (None if it can)."""
    try:
        read_run(path) if path else None
    except (NextRayError, OSError) as error:
        return str(error)
    return None


@st.cache_data(show_spinner=False, max_entries=32)
def _rows(path: str, stamp: tuple[float, ...], level: str) -> pd.DataFrame:
    predictions = _read_run(path, stamp).predictions
    return predictions if level == "image" else study_table(predictions)


def run_rows(run: Run, level: str) -> pd.DataFrame:
    """The run's image rows, or its study rows (mean of the views; the core's study_table)."""
    return _rows(str(run.path), _stamp(run.path, "run.json", "predictions.csv"), level)


@st.cache_data(show_spinner="Bootstrapping intervals…", max_entries=64)
def _metric_table(path: str, stamp: tuple, level: str, threshold: float, n_boot: int):
    return metric_table(_rows(path, stamp, level), threshold, n_boot=n_boot, seed=0)


def run_metrics(run: Run, level: str, threshold: float, n_boot: int = N_BOOT) -> pd.DataFrame:
    """``metrics.metric_table`` for the run at this level and threshold (cached)."""
    stamp = _stamp(run.path, "run.json", "predictions.csv")
    return _metric_table(str(run.path), stamp, level, float(threshold), n_boot)


def class_names() -> tuple[str, str]:
    """What label 0 and 1 are called on screen: the run's names, else the checkpoint's."""
    run = get_run()
    if run is not None:
        return run.class_names
    card = get_card()
    return card.class_names if card is not None else ("normal", "abnormal")


def get_card(path: str | None = None) -> ModelCard | None:
    path = path if path is not None else st.session_state.get(CHECKPOINT)
    try:
        return read_card(path) if path else None
    except NextRayError:
        return None


@st.cache_resource(show_spinner="Loading the model (once per process)…", max_entries=2)
def _load_model(path: str, sha256: str) -> LoadedModel:
    # fp32 answers at once; the fast path is compiled and checked in the background
    return LoadedModel(path=path, engine=load_engine(path, background=True))


def get_model(path: str | None = None) -> LoadedModel | None:
    """The session's checkpoint loaded (once per process), or None; errors are shown."""
    path = path if path is not None else st.session_state.get(CHECKPOINT)
    if not path:
        return None
    try:
        return _load_model(path, read_card(path).weights_sha256)
    except NextRayError as error:
        st.error(f"The checkpoint could not be loaded: {error}")
        return None


def threshold() -> float:
    return float(st.session_state.get(THRESHOLD, 0.5))


def set_threshold(value: float) -> None:
    """For on_click/on_select callbacks: they run before the sidebar slider is drawn."""
    st.session_state[THRESHOLD] = min(1.0, max(0.0, float(value)))


def require_run():
    """The selected run, or a "no run yet" message and the end of this page's script."""
    run = get_run()
    if run is None:
        no_run_message()
        st.stop()
    return run


def no_run_message() -> None:
    st.info(
        "**No run yet.** An evaluation run is a folder written by `nextray evaluate` "
        "(predictions.csv + run.json). Open one in the sidebar, or start the dashboard with "
        "`nextray dashboard --run RUN_FOLDER`. The bundled demo run (checkpoints/demo/run) "
        "is not in this copy yet."
    )


def no_model_message() -> None:
    st.info(
        "**No model yet.** Choose a checkpoint folder (model.safetensors + card.json) in the "
        "sidebar, or start the dashboard with `nextray dashboard --checkpoint FOLDER`. The "
        "bundled demo checkpoint (checkpoints/demo) is not in this copy yet."
    )
